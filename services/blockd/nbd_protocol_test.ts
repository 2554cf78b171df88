import assert from "node:assert/strict";
import fc from "fast-check";
import {
  Command,
  CommandFlag,
  Errno,
  MAX_PAYLOAD_BYTES,
  Option,
  OptionError,
  parseInfoRequest,
  parseOptionHeader,
  parseRequestHeader,
  ProtocolError,
  Reply,
  REQUEST_MAGIC,
  validateRequest,
} from "./nbd_protocol.ts";
import {
  NbdClient,
  readExact,
  readOptionReply,
  sendOption,
  writeAll,
} from "./nbd_client.ts";
import { makeWorkspace, startDaemon } from "./_testing.ts";

const SIZE_BYTES = 8 * 1024 * 1024;
const limits = { sizeBytes: SIZE_BYTES, readOnly: false };

function header(fields: {
  magic?: number;
  flags?: number;
  type: number;
  offset: bigint;
  length: number;
}): Uint8Array {
  const bytes = new Uint8Array(28);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, fields.magic ?? REQUEST_MAGIC);
  view.setUint16(4, fields.flags ?? 0);
  view.setUint16(6, fields.type);
  view.setBigUint64(8, 7n);
  view.setBigUint64(16, fields.offset);
  view.setUint32(24, fields.length);
  return bytes;
}

Deno.test("request parser: any 28 bytes parse or fail with ProtocolError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 28, maxLength: 28 }), (bytes) => {
      try {
        const request = parseRequestHeader(bytes);
        const errno = validateRequest(request, limits);
        assert.ok(Object.values(Errno).includes(errno as never));
      } catch (error) {
        assert.ok(error instanceof ProtocolError, String(error));
      }
    }),
    { numRuns: 20_000, seed: 5 },
  );
});

Deno.test("request validation: accepted requests lie inside the export", () => {
  const arbitraryRequest = fc.record({
    flags: fc.integer({ min: 0, max: 0xffff }),
    type: fc.integer({ min: 0, max: 10 }),
    offset: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    length: fc.integer({ min: 0, max: 0xffffffff }),
  });
  fc.assert(
    fc.property(arbitraryRequest, (fields) => {
      const request = parseRequestHeader(header(fields));
      const errno = validateRequest(request, limits);
      if (errno !== Errno.OK) return;
      assert.ok(
        [Command.READ, Command.WRITE, Command.DISC, Command.FLUSH]
          .includes(request.type as never) ||
          request.type === Command.TRIM ||
          request.type === Command.WRITE_ZEROES,
      );
      if (request.type === Command.DISC || request.type === Command.FLUSH) {
        return;
      }
      assert.ok(request.length > 0);
      assert.ok(request.offset + BigInt(request.length) <= BigInt(SIZE_BYTES));
      if (request.type <= Command.WRITE) {
        assert.ok(request.length <= MAX_PAYLOAD_BYTES);
      }
    }),
    { numRuns: 20_000, seed: 6 },
  );
});

Deno.test("request validation: the spec's error for each bad request", () => {
  const check = (fields: Parameters<typeof header>[0], errno: number) =>
    assert.equal(
      validateRequest(parseRequestHeader(header(fields)), limits),
      errno,
    );
  check({ type: Command.READ, offset: 0n, length: 4096 }, Errno.OK);
  check(
    { type: Command.READ, offset: BigInt(SIZE_BYTES), length: 1 },
    Errno.EINVAL,
  );
  check(
    { type: Command.WRITE, offset: BigInt(SIZE_BYTES - 1), length: 2 },
    Errno.ENOSPC,
  );
  check(
    { type: Command.WRITE_ZEROES, offset: (1n << 64n) - 1n, length: 2 },
    Errno.ENOSPC,
  );
  check({ type: Command.TRIM, offset: 0n, length: 0 }, Errno.EINVAL);
  check({ type: 99, offset: 0n, length: 1 }, Errno.EINVAL);
  check(
    { type: Command.READ, flags: CommandFlag.FUA, offset: 0n, length: 1 },
    Errno.EINVAL,
  );
  check(
    { type: Command.READ, offset: 0n, length: MAX_PAYLOAD_BYTES + 1 },
    Errno.EOVERFLOW,
  );
  check({ type: Command.FLUSH, offset: 1n, length: 0 }, Errno.EINVAL);
  check({ type: Command.CACHE, offset: 0n, length: 1 }, Errno.EINVAL);
  assert.throws(
    () =>
      parseRequestHeader(
        header({ magic: 1, type: 0, offset: 0n, length: 1 }),
      ),
    ProtocolError,
  );
});

Deno.test("option parsers: any bytes parse or fail with a typed error", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      try {
        const info = parseInfoRequest(bytes);
        assert.equal(
          bytes.length,
          6 + new TextEncoder().encode(info.name).length +
            2 * info.items.length,
        );
      } catch (error) {
        assert.ok(error instanceof OptionError, String(error));
      }
    }),
    { numRuns: 20_000, seed: 7 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
      try {
        parseOptionHeader(bytes);
      } catch (error) {
        assert.ok(error instanceof ProtocolError, String(error));
      }
    }),
    { numRuns: 5_000, seed: 8 },
  );
});

/** Connects and finishes the greeting, ready to send options. */
async function rawConnect(socketPath: string): Promise<Deno.Conn> {
  const conn = await Deno.connect({ transport: "unix", path: socketPath });
  await readExact(conn, 18);
  await writeAll(conn, new Uint8Array([0, 0, 0, 3]));
  return conn;
}

function infoPayload(name: string, items: number[]): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const data = new Uint8Array(6 + nameBytes.length + 2 * items.length);
  const view = new DataView(data.buffer);
  view.setUint32(0, nameBytes.length);
  data.set(nameBytes, 4);
  view.setUint16(4 + nameBytes.length, items.length);
  items.forEach((item, i) =>
    view.setUint16(6 + nameBytes.length + 2 * i, item)
  );
  return data;
}

Deno.test("handshake: options get the replies the spec asks for", async () => {
  const workspace = await makeWorkspace();
  const daemon = startDaemon(workspace, SIZE_BYTES);
  try {
    const { socketPath } = await daemon.startGrain("g1");
    const conn = await rawConnect(socketPath);
    try {
      await sendOption(conn, Option.LIST, new Uint8Array(0));
      const server = await readOptionReply(conn);
      assert.equal(server.type, Reply.SERVER);
      assert.equal(new TextDecoder().decode(server.data.subarray(4)), "g1");
      assert.equal((await readOptionReply(conn)).type, Reply.ACK);

      await sendOption(conn, Option.LIST, new Uint8Array(3));
      assert.equal((await readOptionReply(conn)).type, Reply.ERR_INVALID);

      await sendOption(conn, Option.INFO, infoPayload("nope", []));
      assert.equal((await readOptionReply(conn)).type, Reply.ERR_UNKNOWN);

      await sendOption(conn, Option.INFO, new Uint8Array([0, 0, 0, 9, 1]));
      assert.equal((await readOptionReply(conn)).type, Reply.ERR_INVALID);

      await sendOption(conn, Option.STRUCTURED_REPLY, new Uint8Array(0));
      assert.equal((await readOptionReply(conn)).type, Reply.ERR_UNSUP);

      await sendOption(conn, Option.INFO, infoPayload("g1", [3]));
      const replies = [];
      for (;;) {
        const reply = await readOptionReply(conn);
        if (reply.type === Reply.ACK) break;
        replies.push(reply);
      }
      assert.equal(replies.length, 2);
      const exportInfo = new DataView(replies[0].data.buffer);
      assert.equal(exportInfo.getBigUint64(2), BigInt(SIZE_BYTES));

      await sendOption(conn, Option.ABORT, new Uint8Array(0));
      assert.equal((await readOptionReply(conn)).type, Reply.ACK);
      assert.equal(await conn.read(new Uint8Array(1)), null);
    } finally {
      conn.close();
    }
  } finally {
    await daemon.stop();
    await workspace.remove();
  }
});

Deno.test("transmission: bad requests get NBD errors and the connection lives", async () => {
  const workspace = await makeWorkspace();
  const daemon = startDaemon(workspace, SIZE_BYTES);
  try {
    const { socketPath } = await daemon.startGrain("g1");
    const client = await NbdClient.connect(socketPath, "g1");
    try {
      const pattern = new Uint8Array(5000).map((_, i) => i % 251);
      assert.equal((await client.write(100, pattern)).errno, 0);
      assert.equal((await client.read(SIZE_BYTES, 1)).errno, Errno.EINVAL);
      assert.equal(
        (await client.write(SIZE_BYTES - 1, new Uint8Array(2))).errno,
        Errno.ENOSPC,
      );
      assert.equal(
        (await client.request(Command.TRIM, BigInt(SIZE_BYTES), 4096)).errno,
        Errno.EINVAL,
      );
      assert.equal(
        (await client.request(Command.READ, 0n, 10, { flags: 1 << 7 })).errno,
        Errno.EINVAL,
      );
      assert.equal(
        (await client.request(Command.BLOCK_STATUS, 0n, 10)).errno,
        Errno.EINVAL,
      );
      assert.equal(
        (await client.write(0, new Uint8Array(8), CommandFlag.FUA)).errno,
        0,
      );
      const back = await client.read(100, 5000);
      assert.equal(back.errno, 0);
      assert.deepEqual(back.data, pattern);
    } finally {
      await client.disconnect();
    }

    // A bad magic cannot be answered: the server closes that connection
    // and goes on serving others.
    const broken = await NbdClient.connect(socketPath, "g1");
    await writeAll(broken.conn, new Uint8Array(28).fill(0xee));
    assert.equal(await broken.conn.read(new Uint8Array(16)), null);
    broken.conn.close();
    const again = await NbdClient.connect(socketPath, "g1");
    assert.equal((await again.read(0, 8)).errno, 0);
    await again.disconnect();
  } finally {
    await daemon.stop();
    await workspace.remove();
  }
});

Deno.test("fuzz: random byte streams never stop the daemon", async () => {
  const workspace = await makeWorkspace();
  const daemon = startDaemon(workspace, SIZE_BYTES);
  try {
    const { socketPath } = await daemon.startGrain("g1");
    // Streams mix well-formed requests (some out of range, some with odd
    // flags) with raw garbage, sent after a valid handshake or instead of
    // one.
    const request = fc.record({
      flags: fc.constantFrom(0, 1, 2, 0xffff),
      type: fc.integer({ min: 0, max: 9 }),
      offset: fc.constantFrom(0n, 4095n, BigInt(SIZE_BYTES - 1), 1n << 63n),
      length: fc.constantFrom(0, 1, 4096, 70_000, 0xffffffff),
    }).map((fields) => {
      const bytes = header(fields);
      // A write's payload follows only when it is small enough to send.
      return fields.type === Command.WRITE && fields.length <= 70_000
        ? new Uint8Array([...bytes, ...new Uint8Array(fields.length)])
        : bytes;
    });
    const piece = fc.oneof(request, fc.uint8Array({ maxLength: 64 }));
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(piece, { maxLength: 12 }),
        async (handshake, pieces) => {
          const conn = handshake
            ? (await NbdClient.connect(socketPath, "g1")).conn
            : await Deno.connect({ transport: "unix", path: socketPath });
          try {
            for (const bytes of pieces) await writeAll(conn, bytes);
          } catch {
            // The server may have closed the connection already.
          }
          conn.close();
        },
      ),
      { numRuns: 400, seed: 9 },
    );
    const client = await NbdClient.connect(socketPath, "g1");
    assert.equal((await client.read(0, 4096)).errno, 0);
    await client.disconnect();
  } finally {
    await daemon.stop();
    await workspace.remove();
  }
});
