@0xa8cb0f2f1a756b32;
# HTTP requests as Cap'n Proto calls: the session type a grain serves to a
# browser. IDs and ordinals follow Sandstorm's web-session.capnp; the
# supervisor relays each browser request as one call here.

using Util = import "/sandstorm/util.capnp";
using Grain = import "/sandstorm/grain.capnp";

interface WebSession @0xa50711a14d35a8ce extends(Grain.UiSession) {
  get @0 (path :Text, context :Context, ignoreBody :Bool) -> Response;
  # path has no leading slash and includes the query string.
  # ignoreBody is set for HEAD.
  post @1 (path :Text, content :PostContent, context :Context) -> Response;
  put @3 (path :Text, content :PutContent, context :Context) -> Response;
  delete @4 (path :Text, context :Context) -> Response;
  patch @17 (path :Text, content :PostContent, context :Context) -> Response;

  postStreaming @5 (path :Text, mimeType :Text, context :Context,
                    encoding :Text) -> (stream :RequestStream);
  putStreaming @6 (path :Text, mimeType :Text, context :Context,
                   encoding :Text) -> (stream :RequestStream);
  # A request body too large for one message is written to the stream;
  # the response comes from RequestStream.getResponse.

  openWebSocket @2 (path :Text, context :Context, protocol :List(Text),
                    clientStream :WebSocketStream)
      -> (protocol :List(Text), serverStream :WebSocketStream);
  # Each side sends raw WebSocket frames to the other's stream.

  propfind @7 (path :Text, xmlContent :Text, depth :PropfindDepth,
               context :Context) -> Response;
  proppatch @8 (path :Text, xmlContent :Text, context :Context) -> Response;
  mkcol @9 (path :Text, content :PostContent, context :Context) -> Response;
  copy @10 (path :Text, destination :Text, noOverwrite :Bool, shallow :Bool,
            context :Context) -> Response;
  move @11 (path :Text, destination :Text, noOverwrite :Bool,
            context :Context) -> Response;
  lock @12 (path :Text, xmlContent :Text, shallow :Bool, context :Context)
      -> Response;
  unlock @13 (path :Text, lockToken :Text, context :Context) -> Response;
  acl @14 (path :Text, xmlContent :Text, context :Context) -> Response;
  report @15 (path :Text, content :PostContent, context :Context)
      -> Response;
  options @16 (path :Text, context :Context) -> Options;

  struct Params @0xd7051b9757f6b096 {
    # The sessionParams of UiView.newSession for a WebSession.
    basePath @0 :Text;
    # Scheme and host the grain is served on, without a trailing slash.
    userAgent @1 :Text;
    acceptableLanguages @2 :List(Text);
  }

  struct Context @0xf5cae52becabc767 {
    cookies @0 :List(Util.KeyValue);
    responseStream @1 :Util.ByteStream;
    # Where the app may stream a response body instead of returning it.
    accept @2 :List(AcceptedType);
    acceptEncoding @9 :List(AcceptedEncoding);
    eTagPrecondition :union {
      none @4 :Void;
      exists @5 :Void;
      doesntExist @8 :Void;
      matchesOneOf @6 :List(ETag);
      matchesNoneOf @7 :List(ETag);
    }
    additionalHeaders @3 :List(Header);

    struct Header @0xb4e5f4cccb748429 {
      name @0 :Text;
      value @1 :Text;
    }
  }

  struct PostContent @0xb7d82eac416ab63e {
    mimeType @0 :Text;
    content @1 :Data;
    encoding @2 :Text;
  }

  struct PutContent @0xd7aff1fe39659132 {
    mimeType @0 :Text;
    content @1 :Data;
    encoding @2 :Text;
  }

  struct ETag @0xd22c0be5b9c16558 {
    value @0 :Text;
    weak @1 :Bool;
  }

  struct Cookie @0xa87d65bed9b60243 {
    name @0 :Text;
    value @1 :Text;
    expires :union {
      none @2 :Void;
      absolute @3 :Int64;
      relative @4 :UInt64;
    }
    httpOnly @5 :Bool;
    path @6 :Text;
  }

  struct AcceptedType @0xaaf9021b627cc1f9 {
    mimeType @0 :Text;
    qValue @1 :Float32 = 1;
  }

  struct AcceptedEncoding @0xbda585bffe1dc7e8 {
    contentCoding @0 :Text;
    qValue @1 :Float32 = 1;
  }

  struct Response @0x8193ac6cb5429c83 {
    setCookies @0 :List(Cookie);
    cachePolicy @16 :CachePolicy;

    union {
      content :group {
        statusCode @10 :SuccessCode;
        encoding @2 :Text;
        language @3 :Text;
        mimeType @4 :Text;
        eTag @17 :ETag;
        body :union {
          bytes @5 :Data;
          stream @6 :Util.Handle;
          # The body arrives on Context.responseStream; the handle
          # cancels it when dropped.
        }
        disposition :union {
          normal @13 :Void;
          download @14 :Text;
        }
      }
      noContent :group {
        shouldResetForm @15 :Bool;
        eTag @19 :ETag;
      }
      preconditionFailed :group {
        matchingETag @18 :ETag;
      }
      redirect :group {
        isPermanent @1 :Bool;
        switchToGet @12 :Bool;
        location @11 :Text;
      }
      clientError :group {
        statusCode @7 :ClientErrorCode;
        descriptionHtml @8 :Text;
        nonHtmlBody @21 :ErrorBody;
      }
      serverError :group {
        descriptionHtml @9 :Text;
        nonHtmlBody @22 :ErrorBody;
      }
    }

    additionalHeaders @20 :List(Header);

    enum SuccessCode @0x82130007ccd2888f {
      # 200, 201, 202, 204, 206, 207, 304 in this order.
      ok @0;
      created @1;
      accepted @2;
      noContent @3;
      partialContent @4;
      multiStatus @5;
      notModified @6;
    }

    enum ClientErrorCode @0x8ea31bdb4c044f01 {
      # HTTP status in the comment beside each.
      badRequest @0;  # 400
      forbidden @1;  # 403
      notFound @2;  # 404
      methodNotAllowed @3;  # 405
      notAcceptable @4;  # 406
      conflict @5;  # 409
      gone @6;  # 410
      requestEntityTooLarge @7;  # 413
      requestUriTooLong @8;  # 414
      unsupportedMediaType @9;  # 415
      imATeapot @10;  # 418
      preconditionFailed @11;  # 412
      unprocessableEntity @12;  # 422
    }

    struct Header @0xb4b873147ab5ce5e {
      name @0 :Text;
      value @1 :Text;
    }

    struct ErrorBody @0x9497e63b399a2c01 {
      data @0 :Data;
      encoding @1 :Text;
      language @2 :Text;
      mimeType @3 :Text;
    }
  }

  interface RequestStream @0x99ffc2f3f69a6a9f extends(Util.ByteStream) {
    getResponse @0 () -> Response;
  }

  interface WebSocketStream @0xf001fc1d5e574a07 {
    sendBytes @0 (message :Data) -> ();
    # Sandstorm declares this a streaming call; same bytes on the wire.
  }

  struct CachePolicy @0xb37b21e300864885 {
    withCheck @0 :Scope;
    permanent @1 :Scope;
    variesOnCookie @2 :Bool;
    variesOnAccept @3 :Bool;

    enum Scope @0x81535505f60de028 {
      none @0;
      perSession @1;
      perUser @2;
      perAppVersion @3;
      universal @4;
    }
  }

  struct Options @0xe9ff06beec4e73d6 {
    davClass1 @0 :Bool;
    davClass2 @1 :Bool;
    davClass3 @2 :Bool;
    davExtensions @3 :List(Text);
  }

  enum PropfindDepth @0xb39cc44599b3a41b {
    infinity @0;
    zero @1;
    one @2;
  }
}
