// A raw Cap'n Proto Sandstorm app, written against the grain API directly
// (no HTTP bridge). It keeps the user's files under /var/files and serves
// read-only assets from its package under /static.
//
//   GET    files/NAME   the file (streamed through the response stream when
//                       larger than one chunk)
//   GET    ""           a listing of /var/files
//   GET    static/NAME  a file from the package
//   PUT    files/NAME   store the body
//   POST   files/NAME   append the body; answers the new size
//   PATCH  files/NAME   append the body; answers "patched SIZE"
//   DELETE files/NAME   remove
//   WebSocket           echoes every message back

#include <capnp/rpc-twoparty.h>
#include <dirent.h>
#include <fcntl.h>
#include <kj/async-io.h>
#include <kj/io.h>
#include <stdio.h>

#include <algorithm>
#include <kj/debug.h>
#include <kj/vector.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sandstorm/grain.capnp.h"
#include "sandstorm/identity.capnp.h"
#include "sandstorm/util.capnp.h"
#include "sandstorm/web-session.capnp.h"

namespace {

constexpr size_t CHUNK_BYTES = 65536;

using Response = WebSession::Response;

kj::Maybe<kj::Array<kj::byte>> readFile(kj::StringPtr path) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  kj::AutoCloseFd owned(fd);
  kj::Vector<kj::byte> data;
  kj::byte buffer[CHUNK_BYTES];
  for (;;) {
    ssize_t n;
    KJ_SYSCALL(n = read(fd, buffer, sizeof(buffer)));
    if (n == 0) break;
    data.addAll(buffer, buffer + n);
  }
  return data.releaseAsArray();
}

void writeFile(kj::StringPtr path, kj::ArrayPtr<const kj::byte> data, bool append) {
  auto temp = kj::str(path, ".tmp");
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
  int fd;
  KJ_SYSCALL(fd = open(append ? path.cStr() : temp.cStr(), flags, 0600));
  kj::FdOutputStream(kj::AutoCloseFd(fd)).write(data.begin(), data.size());
  if (!append) KJ_SYSCALL(rename(temp.cStr(), path.cStr()));
}

// Accepts "files/NAME" with a plain NAME; anything else is not ours.
kj::Maybe<kj::String> userFilePath(kj::StringPtr path, kj::StringPtr prefix,
                                   kj::StringPtr directory) {
  if (!path.startsWith(prefix)) return nullptr;
  auto name = path.slice(prefix.size());
  kj::String plain = kj::heapString(name);
  KJ_IF_MAYBE(query, name.findFirst('?')) {
    plain = kj::heapString(name.begin(), *query);
  }
  if (plain.size() == 0 || plain == "." || plain == ".." || plain.findFirst('/') != nullptr) {
    return nullptr;
  }
  return kj::str(directory, "/", plain);
}

void notFound(Response::Builder response) {
  auto error = response.initClientError();
  error.setStatusCode(Response::ClientErrorCode::NOT_FOUND);
  error.setDescriptionHtml("no such file");
}

void textResponse(Response::Builder response, kj::StringPtr text) {
  auto content = response.initContent();
  content.setMimeType("text/plain");
  content.getBody().setBytes(text.asBytes());
}

class HandleImpl final : public Handle::Server {};

// Writes the body in chunks, one call after the other, then says done.
kj::Promise<void> pump(ByteStream::Client stream, kj::Array<kj::byte> data, size_t offset) {
  if (offset >= data.size()) {
    return stream.doneRequest().send().ignoreResult();
  }
  size_t end = kj::min(data.size(), offset + CHUNK_BYTES);
  auto request = stream.writeRequest();
  request.setData(data.slice(offset, end));
  return request.send().then(
      [stream, data = kj::mv(data), end](auto&&) mutable {
        return pump(kj::mv(stream), kj::mv(data), end);
      });
}

// Echoes WebSocket messages: unmasks each client frame and sends it back
// unmasked, as a server must.
class EchoSocket final : public WebSession::WebSocketStream::Server {
 public:
  explicit EchoSocket(WebSession::WebSocketStream::Client client) : client(kj::mv(client)) {}

  kj::Promise<void> sendBytes(SendBytesContext context) override {
    auto bytes = context.getParams().getMessage();
    buffer.addAll(bytes);
    kj::Vector<kj::Promise<void>> sends;
    for (;;) {
      if (buffer.size() < 2) break;
      size_t length = buffer[1] & 0x7f;
      size_t header = 2;
      if (length == 126) {
        if (buffer.size() < 4) break;
        length = (size_t(buffer[2]) << 8) | buffer[3];
        header = 4;
      } else if (length == 127) {
        if (buffer.size() < 10) break;
        length = 0;
        for (int i = 0; i < 8; i++) length = (length << 8) | buffer[2 + i];
        header = 10;
      }
      bool masked = buffer[1] & 0x80;
      size_t total = header + (masked ? 4 : 0) + length;
      if (buffer.size() < total) break;
      const kj::byte* key = buffer.begin() + header;
      const kj::byte* payload = key + (masked ? 4 : 0);

      kj::Vector<kj::byte> frame;
      frame.add(buffer[0]);
      if (length < 126) {
        frame.add(length);
      } else if (length < 65536) {
        frame.add(126);
        frame.add(length >> 8);
        frame.add(length & 0xff);
      } else {
        frame.add(127);
        for (int i = 7; i >= 0; i--) frame.add((length >> (8 * i)) & 0xff);
      }
      for (size_t i = 0; i < length; i++) {
        frame.add(masked ? payload[i] ^ key[i % 4] : payload[i]);
      }
      auto request = client.sendBytesRequest();
      request.setMessage(frame.asPtr());
      sends.add(request.send().ignoreResult());

      kj::Vector<kj::byte> rest;
      rest.addAll(buffer.begin() + total, buffer.end());
      buffer = kj::mv(rest);
    }
    return kj::joinPromises(sends.releaseAsArray());
  }

 private:
  WebSession::WebSocketStream::Client client;
  kj::Vector<kj::byte> buffer;
};

class WebSessionImpl final : public WebSession::Server {
 public:
  kj::Promise<void> get(GetContext context) override {
    auto params = context.getParams();
    auto path = params.getPath();
    auto response = context.getResults();

    if (path == "" || path.startsWith("?")) {
      kj::Vector<kj::String> names;
      DIR* dir = opendir("/var/files");
      if (dir != nullptr) {
        while (auto entry = readdir(dir)) {
          kj::StringPtr name = entry->d_name;
          if (name != "." && name != "..") names.add(kj::str(name, "\n"));
        }
        closedir(dir);
      }
      std::sort(names.begin(), names.end());
      textResponse(response, kj::strArray(names, ""));
      return kj::READY_NOW;
    }

    kj::Maybe<kj::String> file = userFilePath(path, "files/", "/var/files");
    if (file == nullptr) file = userFilePath(path, "static/", "/static");
    KJ_IF_MAYBE(filePath, file) {
      KJ_IF_MAYBE(data, readFile(*filePath)) {
        auto content = response.initContent();
        content.setMimeType("application/octet-stream");
        if (data->size() <= CHUNK_BYTES) {
          content.getBody().setBytes(*data);
          return kj::READY_NOW;
        }
        content.getBody().setStream(kj::heap<HandleImpl>());
        auto stream = params.getContext().getResponseStream();
        return pump(kj::mv(stream), kj::mv(*data), 0);
      }
    }
    notFound(response);
    return kj::READY_NOW;
  }

  kj::Promise<void> put(PutContext context) override {
    auto params = context.getParams();
    KJ_IF_MAYBE(file, userFilePath(params.getPath(), "files/", "/var/files")) {
      writeFile(*file, params.getContent().getContent(), false);
      context.getResults().initNoContent();
    } else {
      notFound(context.getResults());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> post(PostContext context) override {
    auto params = context.getParams();
    return append(params.getPath(), params.getContent().getContent(), "",
                  context.getResults());
  }

  kj::Promise<void> patch(PatchContext context) override {
    auto params = context.getParams();
    return append(params.getPath(), params.getContent().getContent(), "patched ",
                  context.getResults());
  }

  kj::Promise<void> delete_(DeleteContext context) override {
    KJ_IF_MAYBE(file, userFilePath(context.getParams().getPath(), "files/", "/var/files")) {
      if (unlink(file->cStr()) == 0) {
        context.getResults().initNoContent();
        return kj::READY_NOW;
      }
    }
    notFound(context.getResults());
    return kj::READY_NOW;
  }

  kj::Promise<void> openWebSocket(OpenWebSocketContext context) override {
    auto params = context.getParams();
    context.getResults().setServerStream(kj::heap<EchoSocket>(params.getClientStream()));
    return kj::READY_NOW;
  }

 private:
  kj::Promise<void> append(kj::StringPtr path, capnp::Data::Reader body, kj::StringPtr label,
                           Response::Builder response) {
    KJ_IF_MAYBE(file, userFilePath(path, "files/", "/var/files")) {
      writeFile(*file, body, true);
      struct stat info;
      KJ_SYSCALL(stat(file->cStr(), &info));
      textResponse(response, kj::str(label, info.st_size));
    } else {
      notFound(response);
    }
    return kj::READY_NOW;
  }
};

class UiViewImpl final : public UiView::Server {
 public:
  kj::Promise<void> getViewInfo(GetViewInfoContext context) override {
    context.getResults().initAppTitle().setDefaultText("Files");
    return kj::READY_NOW;
  }

  kj::Promise<void> newSession(NewSessionContext context) override {
    auto type = context.getParams().getSessionType();
    KJ_REQUIRE(type == capnp::typeId<WebSession>(), "unsupported session type", type);
    context.getResults().setSession(kj::heap<WebSessionImpl>());
    return kj::READY_NOW;
  }
};

}  // namespace

int main() {
  mkdir("/var/files", 0700);
  auto io = kj::setupAsyncIo();
  auto stream = io.lowLevelProvider->wrapSocketFd(3);
  capnp::TwoPartyVatNetwork network(*stream, capnp::rpc::twoparty::Side::CLIENT);
  auto rpcSystem = capnp::makeRpcServer(network, kj::heap<UiViewImpl>());

  // Like every Sandstorm app, ask for the platform's API; this app only
  // checks that it is there.
  capnp::MallocMessageBuilder vatIdMessage;
  auto vatId = vatIdMessage.initRoot<capnp::rpc::twoparty::VatId>();
  vatId.setSide(capnp::rpc::twoparty::Side::SERVER);
  auto api = rpcSystem.bootstrap(vatId).castAs<SandstormApi>();

  network.onDisconnect().wait(io.waitScope);
  return 0;
}
