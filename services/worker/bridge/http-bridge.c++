// The grain-side HTTP bridge: lets an ordinary HTTP app run as a grain.
//
//   http-bridge PORT -- PROGRAM ARGS...
//
// Starts PROGRAM (which must serve HTTP on 127.0.0.1:PORT inside the
// sandbox), answers the grain API on fd 3 with a UiView, and turns every
// WebSession call into one HTTP request to the app. Response bodies of
// unknown or large size are streamed back through the request's
// responseStream while the app still sends them. When the app exits, the
// bridge exits with its status, so the worker sees the grain end.
//
// Built statically against Debian's libcapnp and libkj-http.

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/compat/http.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandstorm/grain.capnp.h"
#include "sandstorm/identity.capnp.h"
#include "sandstorm/util.capnp.h"
#include "sandstorm/web-session.capnp.h"

namespace {

using Response = WebSession::Response;

// Bodies up to this size with a known length come back in one message.
constexpr uint64_t INLINE_BODY_BYTES = 1 << 20;
constexpr size_t CHUNK_BYTES = 65536;

class TaskErrors final : public kj::TaskSet::ErrorHandler {
 public:
  void taskFailed(kj::Exception&& exception) override {
    KJ_LOG(ERROR, "response stream failed", exception);
  }
};

class HandleImpl final : public Handle::Server {};

// What every session shares: the app's address and an HTTP client to it.
class App {
 public:
  App(kj::AsyncIoContext& io, uint port)
      : io(io),
        headers(kj::HttpHeaderTable::Builder().build()),
        address(io.provider->getNetwork()
                    .parseAddress(kj::str("127.0.0.1:", port))
                    .wait(io.waitScope)),
        client(kj::newHttpClient(io.provider->getTimer(), *headers, *address)),
        ready(waitUntilListening(0).fork()),
        tasks(errors) {}

  // Resolves once the app accepts connections; requests wait for it.
  kj::Promise<void> whenReady() { return ready.addBranch(); }

  kj::Promise<void> waitUntilListening(uint attempt) {
    return address->connect().then(
        [](kj::Own<kj::AsyncIoStream>&&) -> kj::Promise<void> { return kj::READY_NOW; },
        [this, attempt](kj::Exception&& e) -> kj::Promise<void> {
          KJ_REQUIRE(attempt < 10000, "app never listened on its port", e);
          return io.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).then(
              [this, attempt]() { return waitUntilListening(attempt + 1); });
        });
  }

  kj::AsyncIoContext& io;
  kj::Own<kj::HttpHeaderTable> headers;
  kj::Own<kj::NetworkAddress> address;
  kj::Own<kj::HttpClient> client;
  kj::ForkedPromise<void> ready;
  TaskErrors errors;
  kj::TaskSet tasks;
};

kj::Promise<void> pump(kj::Own<kj::AsyncInputStream> body, ByteStream::Client stream) {
  auto buffer = kj::heapArray<kj::byte>(CHUNK_BYTES);
  auto read = body->tryRead(buffer.begin(), 1, buffer.size());
  return read.then([body = kj::mv(body), stream, buffer = kj::mv(buffer)](
                       size_t n) mutable -> kj::Promise<void> {
    if (n == 0) return stream.doneRequest().send().ignoreResult();
    auto request = stream.writeRequest();
    request.setData(buffer.slice(0, n));
    return request.send().then(
        [body = kj::mv(body), stream](auto&&) mutable { return pump(kj::mv(body), stream); });
  });
}

Response::ClientErrorCode clientErrorCode(uint status) {
  switch (status) {
    case 403: return Response::ClientErrorCode::FORBIDDEN;
    case 404: return Response::ClientErrorCode::NOT_FOUND;
    case 405: return Response::ClientErrorCode::METHOD_NOT_ALLOWED;
    case 406: return Response::ClientErrorCode::NOT_ACCEPTABLE;
    case 409: return Response::ClientErrorCode::CONFLICT;
    case 410: return Response::ClientErrorCode::GONE;
    case 412: return Response::ClientErrorCode::PRECONDITION_FAILED;
    case 413: return Response::ClientErrorCode::REQUEST_ENTITY_TOO_LARGE;
    case 414: return Response::ClientErrorCode::REQUEST_URI_TOO_LONG;
    case 415: return Response::ClientErrorCode::UNSUPPORTED_MEDIA_TYPE;
    case 418: return Response::ClientErrorCode::IM_A_TEAPOT;
    case 422: return Response::ClientErrorCode::UNPROCESSABLE_ENTITY;
    default: return Response::ClientErrorCode::BAD_REQUEST;
  }
}

Response::SuccessCode successCode(uint status) {
  switch (status) {
    case 201: return Response::SuccessCode::CREATED;
    case 202: return Response::SuccessCode::ACCEPTED;
    case 206: return Response::SuccessCode::PARTIAL_CONTENT;
    case 207: return Response::SuccessCode::MULTI_STATUS;
    case 304: return Response::SuccessCode::NOT_MODIFIED;
    default: return Response::SuccessCode::OK;
  }
}

// One upgraded connection to the app, shared by the two directions.
class SocketPipe final : public kj::Refcounted {
 public:
  explicit SocketPipe(kj::Own<kj::AsyncIoStream> stream) : stream(kj::mv(stream)) {}

  // Writes one after the other: a stream takes one write at a time.
  kj::Promise<void> write(kj::Array<kj::byte> data) {
    auto done = writes
                    .then([this, data = kj::mv(data)]() mutable {
                      auto promise = stream->write(data.begin(), data.size());
                      return promise.attach(kj::mv(data));
                    })
                    .fork();
    writes = done.addBranch();
    return done.addBranch();
  }

  kj::Own<kj::AsyncIoStream> stream;
  kj::Promise<void> writes = kj::READY_NOW;
};

// The platform's side sends frames here; they go to the app unchanged.
class ServerSocketStream final : public WebSession::WebSocketStream::Server {
 public:
  explicit ServerSocketStream(kj::Own<SocketPipe> pipe) : pipe(kj::mv(pipe)) {}
  ~ServerSocketStream() noexcept(false) { pipe->stream->shutdownWrite(); }

  kj::Promise<void> sendBytes(SendBytesContext context) override {
    return pipe->write(kj::heapArray<kj::byte>(context.getParams().getMessage()));
  }

 private:
  kj::Own<SocketPipe> pipe;
};

// Frames from the app go to the platform's stream until the app closes.
kj::Promise<void> pumpToClient(kj::Own<SocketPipe> pipe,
                               WebSession::WebSocketStream::Client client) {
  auto buffer = kj::heapArray<kj::byte>(CHUNK_BYTES);
  auto read = pipe->stream->tryRead(buffer.begin(), 1, buffer.size());
  return read.then([pipe = kj::mv(pipe), client, buffer = kj::mv(buffer)](
                       size_t n) mutable -> kj::Promise<void> {
    if (n == 0) return kj::READY_NOW;
    auto request = client.sendBytesRequest();
    request.setMessage(buffer.slice(0, n));
    return request.send().then([pipe = kj::mv(pipe), client](auto&&) mutable {
      return pumpToClient(kj::mv(pipe), kj::mv(client));
    });
  });
}

// Reads the app's response head (up to the blank line); what follows it
// is already WebSocket data.
kj::Promise<kj::Array<char>> readHead(kj::AsyncIoStream& stream, kj::Vector<char> head) {
  auto buffer = kj::heapArray<char>(4096);
  auto read = stream.tryRead(buffer.begin(), 1, buffer.size());
  return read.then([&stream, head = kj::mv(head), buffer = kj::mv(buffer)](
                       size_t n) mutable -> kj::Promise<kj::Array<char>> {
    KJ_REQUIRE(n > 0, "app closed the connection during the WebSocket handshake");
    head.addAll(buffer.begin(), buffer.begin() + n);
    KJ_REQUIRE(head.size() <= 65536, "WebSocket handshake response too large");
    for (size_t i = 3; i < head.size(); i++) {
      if (head[i - 3] == '\r' && head[i - 2] == '\n' && head[i - 1] == '\r' && head[i] == '\n') {
        return head.releaseAsArray();
      }
    }
    return readHead(stream, kj::mv(head));
  });
}

kj::String lowercase(kj::ArrayPtr<const char> text) {
  auto out = kj::heapString(text);
  for (char& c : out) c = tolower(c);
  return out;
}

class WebSessionImpl final : public WebSession::Server {
 public:
  WebSessionImpl(App& app, kj::String userName, kj::String userId, kj::String permissions)
      : app(app),
        userName(kj::mv(userName)),
        userId(kj::mv(userId)),
        permissions(kj::mv(permissions)) {}

  kj::Promise<void> get(GetContext context) override {
    auto params = context.getParams();
    return relay(params.getIgnoreBody() ? kj::HttpMethod::HEAD : kj::HttpMethod::GET,
                 params.getPath(), params.getContext(), nullptr, nullptr,
                 context.getResults());
  }

  kj::Promise<void> post(PostContext context) override {
    auto params = context.getParams();
    auto content = params.getContent();
    return relay(kj::HttpMethod::POST, params.getPath(), params.getContext(),
                 content.getMimeType(), content.getContent(), context.getResults());
  }

  kj::Promise<void> put(PutContext context) override {
    auto params = context.getParams();
    auto content = params.getContent();
    return relay(kj::HttpMethod::PUT, params.getPath(), params.getContext(),
                 content.getMimeType(), content.getContent(), context.getResults());
  }

  kj::Promise<void> patch(PatchContext context) override {
    auto params = context.getParams();
    auto content = params.getContent();
    return relay(kj::HttpMethod::PATCH, params.getPath(), params.getContext(),
                 content.getMimeType(), content.getContent(), context.getResults());
  }

  kj::Promise<void> delete_(DeleteContext context) override {
    auto params = context.getParams();
    return relay(kj::HttpMethod::DELETE, params.getPath(), params.getContext(), nullptr,
                 nullptr, context.getResults());
  }

  kj::Promise<void> openWebSocket(OpenWebSocketContext context) override {
    auto params = context.getParams();
    kj::byte key[16];
    KJ_SYSCALL(getrandom(key, sizeof(key), 0));
    kj::Vector<kj::String> lines;
    lines.add(kj::str("GET /", params.getPath(), " HTTP/1.1"));
    lines.add(kj::str("Host: sandbox"));
    lines.add(kj::str("Upgrade: websocket"));
    lines.add(kj::str("Connection: Upgrade"));
    lines.add(kj::str("Sec-WebSocket-Version: 13"));
    lines.add(kj::str("Sec-WebSocket-Key: ", kj::encodeBase64(key)));
    if (params.getProtocol().size() > 0) {
      lines.add(kj::str("Sec-WebSocket-Protocol: ", kj::strArray(params.getProtocol(), ", ")));
    }
    for (auto header : params.getContext().getAdditionalHeaders()) {
      lines.add(kj::str(header.getName(), ": ", header.getValue()));
    }
    lines.add(kj::str("X-Sandstorm-Username: ", userName));
    if (userId.size() > 0) lines.add(kj::str("X-Sandstorm-User-Id: ", userId));
    lines.add(kj::str("X-Sandstorm-Permissions: ", permissions));
    auto request = kj::str(kj::strArray(lines, "\r\n"), "\r\n\r\n");
    auto client = params.getClientStream();

    return app.whenReady()
        .then([this]() { return app.address->connect(); })
        .then([request = kj::mv(request)](kj::Own<kj::AsyncIoStream> stream) mutable {
          auto& ref = *stream;
          auto sent = ref.write(request.begin(), request.size());
          return sent.attach(kj::mv(request)).then([stream = kj::mv(stream)]() mutable {
            auto& ref = *stream;
            return readHead(ref, kj::Vector<char>()).then(
                [stream = kj::mv(stream)](kj::Array<char> head) mutable {
                  return kj::tuple(kj::mv(stream), kj::mv(head));
                });
          });
        })
        .then([this, context, client](
                  kj::Tuple<kj::Own<kj::AsyncIoStream>, kj::Array<char>> result) mutable {
          auto stream = kj::mv(kj::get<0>(result));
          auto head = kj::mv(kj::get<1>(result));
          auto text = lowercase(head);
          KJ_REQUIRE(text.startsWith("http/1.1 101"), "app refused the WebSocket",
                     kj::heapString(head.begin(), kj::min(head.size(), size_t(80))));
          // Everything after the blank line is already frames.
          size_t end = 0;
          for (size_t i = 3; i < head.size(); i++) {
            if (head[i - 3] == '\r' && head[i - 2] == '\n' && head[i - 1] == '\r' &&
                head[i] == '\n') {
              end = i + 1;
              break;
            }
          }
          auto results = context.getResults();
          const char* header = strstr(text.cStr(), "\r\nsec-websocket-protocol:");
          if (header != nullptr) {
            // The value keeps its case: take it from the original bytes.
            size_t from = header - text.cStr() + 25;
            while (from < head.size() && head[from] == ' ') from++;
            size_t to = from;
            while (to < head.size() && head[to] != '\r') to++;
            results.initProtocol(1).set(0, kj::heapString(head.begin() + from, to - from));
          }
          auto pipe = kj::refcounted<SocketPipe>(kj::mv(stream));
          results.setServerStream(kj::heap<ServerSocketStream>(kj::addRef(*pipe)));
          kj::Promise<void> first = kj::READY_NOW;
          if (end < head.size()) {
            auto request = client.sendBytesRequest();
            request.setMessage(head.asBytes().slice(end, head.size()));
            first = request.send().ignoreResult();
          }
          app.tasks.add(first.then([pipe = kj::mv(pipe), client]() mutable {
            return pumpToClient(kj::mv(pipe), kj::mv(client));
          }));
        });
  }

 private:
  App& app;
  kj::String userName;
  kj::String userId;
  kj::String permissions;

  kj::Promise<void> relay(kj::HttpMethod method, kj::StringPtr path,
                          WebSession::Context::Reader context, kj::StringPtr mimeType,
                          capnp::Data::Reader body, Response::Builder response) {
    // Copy what the request needs: the params message is gone once this
    // method's promise chain moves on.
    auto url = kj::str("/", path);
    auto type = kj::heapString(mimeType);
    auto bodyCopy = kj::heapArray<kj::byte>(body);
    kj::Vector<kj::String> names;
    kj::Vector<kj::String> values;
    for (auto header : context.getAdditionalHeaders()) {
      names.add(kj::heapString(header.getName()));
      values.add(kj::heapString(header.getValue()));
    }
    kj::Vector<kj::String> cookies;
    for (auto cookie : context.getCookies()) {
      cookies.add(kj::str(cookie.getKey(), "=", cookie.getValue()));
    }
    ByteStream::Client responseStream = context.getResponseStream();

    return app.whenReady().then([this, method, url = kj::mv(url), type = kj::mv(type),
                                 bodyCopy = kj::mv(bodyCopy), names = kj::mv(names),
                                 values = kj::mv(values), cookies = kj::mv(cookies),
                                 responseStream, response]() mutable {
      kj::HttpHeaders headers(*app.headers);
      headers.set(kj::HttpHeaderId::HOST, "sandbox");
      if (type.size() > 0) headers.set(kj::HttpHeaderId::CONTENT_TYPE, type);
      for (size_t i = 0; i < names.size(); i++) headers.add(names[i], values[i]);
      if (cookies.size() > 0) headers.add("Cookie", kj::strArray(cookies, "; "));
      headers.add("X-Sandstorm-Username", userName);
      if (userId.size() > 0) headers.add("X-Sandstorm-User-Id", userId);
      headers.add("X-Sandstorm-Permissions", permissions);

      auto request = app.client->request(method, url, headers, uint64_t(bodyCopy.size()));
      kj::Promise<void> sent = kj::READY_NOW;
      if (bodyCopy.size() > 0) {
        auto& stream = *request.body;
        sent = stream.write(bodyCopy.begin(), bodyCopy.size())
                   .attach(kj::mv(request.body), kj::mv(bodyCopy));
      } else {
        request.body = nullptr;
      }
      return sent.then([response = kj::mv(request.response)]() mutable {
                   return kj::mv(response);
                 })
          .then([this, responseStream, response](kj::HttpClient::Response&& http) mutable {
            return translate(kj::mv(http), kj::mv(responseStream), response);
          });
    });
  }

  kj::Promise<void> translate(kj::HttpClient::Response&& http, ByteStream::Client stream,
                              Response::Builder response) {
    uint status = http.statusCode;
    auto mimeType = kj::heapString(
        http.headers->get(kj::HttpHeaderId::CONTENT_TYPE).orDefault("application/octet-stream"));
    if (status == 204 || status == 205) {
      response.initNoContent().setShouldResetForm(status == 205);
      return kj::READY_NOW;
    }
    if (status >= 300 && status < 400 && status != 304) {
      auto redirect = response.initRedirect();
      redirect.setIsPermanent(status == 301 || status == 308);
      redirect.setSwitchToGet(status == 301 || status == 302 || status == 303);
      redirect.setLocation(http.headers->get(kj::HttpHeaderId::LOCATION).orDefault(""));
      return kj::READY_NOW;
    }
    if (status >= 200 && status < 400) {
      auto content = response.initContent();
      content.setStatusCode(successCode(status));
      content.setMimeType(mimeType);
      uint64_t length = http.body->tryGetLength().orDefault(kj::maxValue);
      if (length <= INLINE_BODY_BYTES) {
        auto& body = *http.body;
        return body.readAllBytes()
            .then([content](kj::Array<kj::byte>&& bytes) mutable {
              content.getBody().setBytes(bytes);
            })
            .attach(kj::mv(http.body));
      }
      // Unknown or large: answer now, stream the body as it comes.
      content.getBody().setStream(kj::heap<HandleImpl>());
      app.tasks.add(pump(kj::mv(http.body), kj::mv(stream)));
      return kj::READY_NOW;
    }
    auto& body = *http.body;
    return body.readAllBytes()
        .then([status, response, mimeType = kj::mv(mimeType)](
                  kj::Array<kj::byte>&& bytes) mutable {
          auto errorBody = status < 500
              ? [&]() {
                  auto error = response.initClientError();
                  error.setStatusCode(clientErrorCode(status));
                  return error.initNonHtmlBody();
                }()
              : response.initServerError().initNonHtmlBody();
          errorBody.setData(bytes);
          errorBody.setMimeType(mimeType);
        })
        .attach(kj::mv(http.body));
  }
};

class UiViewImpl final : public UiView::Server {
 public:
  explicit UiViewImpl(App& app) : app(app) {}

  kj::Promise<void> getViewInfo(GetViewInfoContext context) override {
    context.getResults().initAppTitle().setDefaultText("HTTP app");
    return kj::READY_NOW;
  }

  kj::Promise<void> newSession(NewSessionContext context) override {
    auto params = context.getParams();
    KJ_REQUIRE(params.getSessionType() == capnp::typeId<WebSession>(),
               "unsupported session type", params.getSessionType());
    auto user = params.getUserInfo();
    kj::Vector<kj::String> granted;
    uint index = 0;
    for (bool flag : user.getPermissions()) {
      if (flag) granted.add(kj::str(index));
      index++;
    }
    context.getResults().setSession(kj::heap<WebSessionImpl>(
        app, kj::encodeUriComponent(user.getDisplayName().getDefaultText()),
        kj::encodeHex(user.getIdentityId()), kj::strArray(granted, ",")));
    return kj::READY_NOW;
  }

 private:
  App& app;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || kj::StringPtr(argv[2]) != "--") {
    fprintf(stderr, "usage: http-bridge PORT -- PROGRAM ARGS...\n");
    return 2;
  }
  uint port = atoi(argv[1]);

  kj::UnixEventPort::captureChildExit();
  auto io = kj::setupAsyncIo();

  pid_t child = fork();
  if (child < 0) {
    perror("http-bridge: fork");
    return 1;
  }
  if (child == 0) {
    close(3);  // The grain API belongs to the bridge, not the app.
    execv(argv[3], argv + 3);
    perror("http-bridge: exec");
    _exit(127);
  }
  kj::Maybe<pid_t> appPid = child;
  auto appExit = io.unixEventPort.onChildExit(appPid);

  App app(io, port);
  auto stream = io.lowLevelProvider->wrapSocketFd(3);
  capnp::TwoPartyVatNetwork network(*stream, capnp::rpc::twoparty::Side::CLIENT);
  auto rpcSystem = capnp::makeRpcServer(network, kj::heap<UiViewImpl>(app));

  capnp::MallocMessageBuilder vatIdMessage;
  auto vatId = vatIdMessage.initRoot<capnp::rpc::twoparty::VatId>();
  vatId.setSide(capnp::rpc::twoparty::Side::SERVER);
  auto api = rpcSystem.bootstrap(vatId).castAs<SandstormApi>();

  // Whichever ends first, the app or the platform's connection, ends the
  // grain.
  auto status = appExit.exclusiveJoin(network.onDisconnect().then([child]() {
    kill(child, SIGTERM);
    return 0;
  })).wait(io.waitScope);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
