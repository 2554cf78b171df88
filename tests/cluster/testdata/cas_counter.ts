// Increments a counter in a shared state file N times by compare-and-set,
// retrying each lost race: run several at once to test cross-process CAS.
import { SqliteStateStore } from "../../../services/coordinator/shared_state.ts";

const [file, countText] = Deno.args;
const store = new SqliteStateStore(file);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
for (let done = 0; done < Number(countText);) {
  const current = await store.get("counter");
  const value = current === null ? 0 : Number(decoder.decode(current.value));
  const result = await store.compareAndSet(
    "counter",
    current?.version ?? 0,
    encoder.encode(String(value + 1)),
  );
  if (result.ok) done++;
}
store.close();
