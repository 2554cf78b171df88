// The Cap'n Proto C++ reference (libcapnp-dev) on the other end of the
// interop tests: serves TestHost (proto/rpc_test.capnp), or calls one and
// checks every answer, or measures call round trips for the benchmark.
//
//   peer server ADDRESS         listen ("unix:/path" or "127.0.0.1:0"),
//                               print "listening PORT", serve until killed
//   peer client ADDRESS         run the checks, print "ok" or fail
//   peer client-fd FD           the same over an inherited socket (a grain's
//                               fd 3), with TwoPartyClient
//   peer rtt ADDRESS COUNT      time COUNT sequential add calls, print
//                               "rtt_us MICROSECONDS" (mean)

#include <capnp/ez-rpc.h>
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "rpc_test.capnp.h"

namespace {

// Counters made by this process and still referenced.
int liveCounters = 0;

class CounterImpl final : public Counter::Server {
 public:
  explicit CounterImpl(int start) : value(start) { ++liveCounters; }
  ~CounterImpl() noexcept(false) { --liveCounters; }

 protected:
  kj::Promise<void> increment(IncrementContext context) override {
    value += context.getParams().getBy();
    context.getResults().setValue(value);
    return kj::READY_NOW;
  }

 private:
  int value;
};

kj::Exception::Type exceptionType(kj::StringPtr kind) {
  if (kind == "overloaded") return kj::Exception::Type::OVERLOADED;
  if (kind == "disconnected") return kj::Exception::Type::DISCONNECTED;
  if (kind == "unimplemented") return kj::Exception::Type::UNIMPLEMENTED;
  return kj::Exception::Type::FAILED;
}

// Calls to TreeHost.wait that their callers canceled.
int canceledWaits = 0;

class TreeHostImpl final : public TreeHost::Server {
 protected:
  kj::Promise<void> swap(SwapContext context) override {
    context.getResults().setTree(context.getParams().getTree());
    return kj::READY_NOW;
  }

  kj::Promise<void> wait(WaitContext context) override {
    // Never answers; dropping the promise (a Finish from the caller)
    // counts a cancellation.
    context.allowCancellation();
    return kj::Promise<void>(kj::NEVER_DONE).attach(kj::defer([]() { ++::canceledWaits; }));
  }

  kj::Promise<void> canceledWaits(CanceledWaitsContext context) override {
    context.getResults().setCount(::canceledWaits);
    return kj::READY_NOW;
  }
};

class TestHostImpl final : public TestHost::Server {
 protected:
  kj::Promise<void> add(AddContext context) override {
    auto params = context.getParams();
    context.getResults().setSum(params.getA() + params.getB());
    return kj::READY_NOW;
  }

  kj::Promise<void> newCounter(NewCounterContext context) override {
    context.getResults().setCounter(
        kj::heap<CounterImpl>(context.getParams().getStart()));
    return kj::READY_NOW;
  }

  kj::Promise<void> useCounter(UseCounterContext context) override {
    auto params = context.getParams();
    auto request = params.getCounter().incrementRequest();
    request.setBy(params.getBy());
    return request.send().then([context](auto response) mutable {
      context.getResults().setValue(response.getValue());
    });
  }

  kj::Promise<void> holdCounter(HoldCounterContext context) override {
    held.add(context.getParams().getCounter());
    return kj::READY_NOW;
  }

  kj::Promise<void> dropHeld(DropHeldContext context) override {
    held.clear();
    return kj::READY_NOW;
  }

  kj::Promise<void> liveCounters(LiveCountersContext context) override {
    context.getResults().setCount(::liveCounters);
    return kj::READY_NOW;
  }

  kj::Promise<void> fail(FailContext context) override {
    auto kind = context.getParams().getKind();
    return kj::Exception(exceptionType(kind), __FILE__, __LINE__,
                         kj::str("asked to fail"));
  }

  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setData(context.getParams().getData());
    return kj::READY_NOW;
  }

  kj::Promise<void> self(SelfContext context) override {
    context.getResults().setHost(thisCap());
    return kj::READY_NOW;
  }

  kj::Promise<void> bounce(BounceContext context) override {
    context.getResults().setCounter(context.getParams().getCounter());
    return kj::READY_NOW;
  }

  kj::Promise<void> promisedCounter(PromisedCounterContext context) override {
    auto paf = kj::newPromiseAndFulfiller<Counter::Client>();
    int start = context.getParams().getStart();
    unsettled.add([start, fulfiller = kj::mv(paf.fulfiller)]() mutable {
      fulfiller->fulfill(kj::heap<CounterImpl>(start));
    });
    context.getResults().setCounter(kj::mv(paf.promise));
    return kj::READY_NOW;
  }

  kj::Promise<void> promisedBounce(PromisedBounceContext context) override {
    auto paf = kj::newPromiseAndFulfiller<Counter::Client>();
    Counter::Client target = context.getParams().getCounter();
    unsettled.add([target = kj::mv(target), fulfiller = kj::mv(paf.fulfiller)]() mutable {
      fulfiller->fulfill(kj::mv(target));
    });
    context.getResults().setCounter(kj::mv(paf.promise));
    return kj::READY_NOW;
  }

  kj::Promise<void> trees(TreesContext context) override {
    context.getResults().setHost(kj::heap<TreeHostImpl>());
    return kj::READY_NOW;
  }

  kj::Promise<void> settle(SettleContext context) override {
    auto settling = kj::mv(unsettled);
    unsettled = {};
    for (auto& settleOne : settling) settleOne();
    return kj::READY_NOW;
  }

 private:
  kj::Vector<Counter::Client> held;
  kj::Vector<kj::Function<void()>> unsettled;
};

int serve(const char* address) {
  capnp::EzRpcServer server(kj::heap<TestHostImpl>(), address);
  auto& waitScope = server.getWaitScope();
  unsigned port = server.getPort().wait(waitScope);
  printf("listening %u\n", port);
  fflush(stdout);
  kj::NEVER_DONE.wait(waitScope);
}

int remoteLive(TestHost::Client& host, kj::WaitScope& waitScope) {
  return host.liveCountersRequest().send().wait(waitScope).getCount();
}

// Waits (a few round trips) for a Release to reach this process.
bool settles(TestHost::Client& host, kj::WaitScope& waitScope, int expectedLocal) {
  for (int i = 0; i < 20; i++) {
    if (liveCounters == expectedLocal) return true;
    auto request = host.addRequest();
    request.send().wait(waitScope);
  }
  return liveCounters == expectedLocal;
}

void checks(TestHost::Client& host, kj::WaitScope& waitScope) {
  {
    auto request = host.addRequest();
    request.setA(2);
    request.setB(3);
    KJ_ASSERT(request.send().wait(waitScope).getSum() == 5);
  }

  // Pipelining: increment a counter before newCounter has returned, and
  // call add on the host's self before self has returned.
  {
    auto made = host.newCounterRequest();
    made.setStart(10);
    auto promise = made.send();
    auto first = promise.getCounter().incrementRequest();
    first.setBy(5);
    auto second = promise.getCounter().incrementRequest();
    second.setBy(1);
    auto firstValue = first.send();
    auto secondValue = second.send();
    KJ_ASSERT(firstValue.wait(waitScope).getValue() == 15);
    KJ_ASSERT(secondValue.wait(waitScope).getValue() == 16);
    KJ_ASSERT(remoteLive(host, waitScope) == 1);
    auto sum = host.selfRequest().send().getHost().addRequest();
    sum.setA(4);
    sum.setB(4);
    KJ_ASSERT(sum.send().wait(waitScope).getSum() == 8);
  }
  // Every reference to the counter is gone: the host must have seen the
  // Release (it is ordered before this call).
  KJ_ASSERT(remoteLive(host, waitScope) == 0, remoteLive(host, waitScope));

  // A capability from here, called back by the host, then held and
  // released by it.
  {
    Counter::Client mine = kj::heap<CounterImpl>(100);
    auto use = host.useCounterRequest();
    use.setCounter(mine);
    use.setBy(7);
    KJ_ASSERT(use.send().wait(waitScope).getValue() == 107);
    auto hold = host.holdCounterRequest();
    hold.setCounter(mine);
    hold.send().wait(waitScope);
  }
  KJ_ASSERT(liveCounters == 1, "held by the host", liveCounters);
  host.dropHeldRequest().send().wait(waitScope);
  KJ_ASSERT(settles(host, waitScope, 0), "released by the host", liveCounters);

  // Embargo: calls pipelined on our own capability bounced by the host
  // keep their order once the answer says it is local.
  {
    Counter::Client mine = kj::heap<CounterImpl>(0);
    auto bounce = host.bounceRequest();
    bounce.setCounter(mine);
    auto bounced = bounce.send().getCounter();
    kj::Vector<kj::Promise<int>> values;
    for (int i = 0; i < 20; i++) {
      auto request = bounced.incrementRequest();
      request.setBy(1);
      values.add(request.send().then([](auto r) { return r.getValue(); }));
    }
    for (int i = 0; i < 20; i++) {
      int value = values[i].wait(waitScope);
      KJ_ASSERT(value == i + 1, value, i);
    }
  }

  // A counter returned as a promise: calls queue until it resolves, and
  // keep their order across the Resolve.
  {
    auto made = host.promisedCounterRequest();
    made.setStart(10);
    Counter::Client counter = made.send().wait(waitScope).getCounter();
    kj::Vector<kj::Promise<int>> values;
    auto increment = [&]() {
      auto request = counter.incrementRequest();
      request.setBy(1);
      values.add(request.send().then([](auto r) { return r.getValue(); }));
    };
    increment();
    increment();
    host.settleRequest().send().wait(waitScope);
    increment();
    increment();
    for (int i = 0; i < 4; i++) {
      int value = values[i].wait(waitScope);
      KJ_ASSERT(value == 11 + i, value, i);
    }
  }
  KJ_ASSERT(remoteLive(host, waitScope) == 0, remoteLive(host, waitScope));

  // Our own capability returned as a promise: once the Resolve says it is
  // local, new calls wait for the ones looping through the host.
  {
    Counter::Client mine = kj::heap<CounterImpl>(0);
    auto bounce = host.promisedBounceRequest();
    bounce.setCounter(mine);
    Counter::Client bounced = bounce.send().wait(waitScope).getCounter();
    kj::Vector<kj::Promise<int>> values;
    auto increment = [&]() {
      auto request = bounced.incrementRequest();
      request.setBy(1);
      values.add(request.send().then([](auto r) { return r.getValue(); }));
    };
    for (int i = 0; i < 5; i++) increment();
    auto settled = host.settleRequest().send();
    for (int i = 0; i < 10; i++) increment();
    settled.wait(waitScope);
    for (int i = 0; i < 10; i++) increment();
    for (int i = 0; i < 25; i++) {
      int value = values[i].wait(waitScope);
      KJ_ASSERT(value == i + 1, value, i);
    }
  }
  KJ_ASSERT(settles(host, waitScope, 0), "promised bounce released", liveCounters);

  // Exceptions keep their type.
  for (auto kind : {"failed", "overloaded", "disconnected", "unimplemented"}) {
    auto request = host.failRequest();
    request.setKind(kind);
    auto result = request.send().then(
        [](auto) -> kj::Maybe<kj::Exception> { return nullptr; },
        [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); });
    KJ_IF_MAYBE(e, result.wait(waitScope)) {
      KJ_ASSERT(e->getType() == exceptionType(kind), kind, e->getDescription());
    } else {
      KJ_FAIL_ASSERT("call did not fail", kind);
    }
  }

  // A tree far larger than a first segment (so built in several, with
  // far pointers) comes back unchanged from TreeHost.swap.
  {
    auto trees = host.treesRequest().send().getHost();
    auto request = trees.swapRequest();
    auto tree = request.initTree();
    tree.setText(kj::str(kj::repeat('t', 5000)));
    auto children = tree.initChildren(40);
    for (unsigned i = 0; i < children.size(); i++) {
      auto child = children[i];
      child.setNumber(i * 1000003ull);
      child.setRatio(i * 0.25f);
      child.setText(kj::str("child ", i, kj::repeat('c', 300)));
      auto data = child.initData(2000 + i);
      for (size_t j = 0; j < data.size(); j++) data[j] = (i + j) & 0xff;
      auto texts = child.initTexts(8);
      for (unsigned j = 0; j < texts.size(); j++) texts.set(j, kj::str("entry-", j, "-abcd"));
    }
    auto response = request.send().wait(waitScope);
    auto back = response.getTree();
    KJ_ASSERT(back.getText().size() == 5000);
    KJ_ASSERT(back.getChildren().size() == 40);
    for (unsigned i = 0; i < 40; i++) {
      auto child = back.getChildren()[i];
      KJ_ASSERT(child.getNumber() == i * 1000003ull, i);
      KJ_ASSERT(child.getRatio() == i * 0.25f, i);
      KJ_ASSERT(child.getText() == kj::str("child ", i, kj::repeat('c', 300)), i);
      auto data = child.getData();
      KJ_ASSERT(data.size() == 2000 + i, i);
      for (size_t j = 0; j < data.size(); j++) KJ_ASSERT(data[j] == ((i + j) & 0xff), i, j);
      KJ_ASSERT(child.getTexts().size() == 8);
      KJ_ASSERT(child.getTexts()[7] == "entry-7-abcd");
    }
  }

  // Cancellation: dropping a call's promise before its Return sends
  // Finish, and the server sees the call canceled.
  {
    auto trees = host.treesRequest().send().getHost();
    int before = trees.canceledWaitsRequest().send().wait(waitScope).getCount();
    {
      auto waiting = trees.waitRequest().send();
      // Answered after the wait call reached the server.
      trees.canceledWaitsRequest().send().wait(waitScope);
    }
    bool canceled = false;
    for (int i = 0; i < 20 && !canceled; i++) {
      int count = trees.canceledWaitsRequest().send().wait(waitScope).getCount();
      canceled = count == before + 1;
    }
    KJ_ASSERT(canceled, "the server saw the canceled call");
  }

  {
    auto request = host.echoRequest();
    auto data = request.initData(100000);
    for (size_t i = 0; i < data.size(); i++) data[i] = i & 0xff;
    auto response = request.send().wait(waitScope);
    KJ_ASSERT(response.getData().size() == 100000);
    KJ_ASSERT(response.getData()[99999] == (99999 & 0xff));
  }
}

int rtt(const char* address, int count) {
  capnp::EzRpcClient client(address);
  auto& waitScope = client.getWaitScope();
  TestHost::Client host = client.getMain<TestHost>();
  for (int i = 0; i < 200; i++) {
    auto request = host.addRequest();
    request.send().wait(waitScope);
  }
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < count; i++) {
    auto request = host.addRequest();
    request.setA(i);
    request.setB(1);
    KJ_ASSERT(request.send().wait(waitScope).getSum() == i + 1);
  }
  auto elapsed = std::chrono::steady_clock::now() - start;
  double us = std::chrono::duration<double, std::micro>(elapsed).count() / count;
  printf("rtt_us %.3f\n", us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && strcmp(argv[1], "server") == 0) return serve(argv[2]);
  if (argc >= 4 && strcmp(argv[1], "rtt") == 0) return rtt(argv[2], atoi(argv[3]));
  if (argc >= 3 && strcmp(argv[1], "client") == 0) {
    capnp::EzRpcClient client(argv[2]);
    auto& waitScope = client.getWaitScope();
    TestHost::Client host = client.getMain<TestHost>();
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { checks(host, waitScope); })) {
      fprintf(stderr, "check failed: %s\n", e->getDescription().cStr());
      return 1;
    }
    printf("ok\n");
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "client-fd") == 0) {
    auto io = kj::setupAsyncIo();
    auto stream = io.lowLevelProvider->wrapSocketFd(atoi(argv[2]));
    capnp::TwoPartyClient client(*stream);
    TestHost::Client host = client.bootstrap().castAs<TestHost>();
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { checks(host, io.waitScope); })) {
      fprintf(stderr, "check failed: %s\n", e->getDescription().cStr());
      return 1;
    }
    printf("ok\n");
    return 0;
  }
  fprintf(stderr, "usage: peer server ADDRESS | peer client ADDRESS | peer client-fd FD | peer rtt ADDRESS COUNT\n");
  return 2;
}
