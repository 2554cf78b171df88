/**
 * WebSocket frames as they cross a WebSession: Sandstorm's
 * `openWebSocket` carries raw frame bytes, so whoever joins a browser's
 * WebSocket to an app's encodes the client's messages as masked frames and
 * reassembles the app's (unmasked, possibly fragmented) frames into
 * messages.
 *
 * @module
 */

/** One WebSocket frame as a client sends it: final, masked. */
export function encodeClientFrame(
  opcode: number,
  payload: Uint8Array,
): Uint8Array {
  const length = payload.length;
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = new Uint8Array(header + 4 + length);
  frame[0] = 0x80 | opcode;
  const view = new DataView(frame.buffer);
  if (length < 126) frame[1] = 0x80 | length;
  else if (length < 65536) {
    frame[1] = 0x80 | 126;
    view.setUint16(2, length);
  } else {
    frame[1] = 0x80 | 127;
    view.setBigUint64(2, BigInt(length));
  }
  const mask = crypto.getRandomValues(new Uint8Array(4));
  frame.set(mask, header);
  for (let i = 0; i < length; i++) {
    frame[header + 4 + i] = payload[i] ^ mask[i & 3];
  }
  return frame;
}

/** Largest message accepted from an app through the relay. */
const MAX_MESSAGE_BYTES = 16 << 20;

/**
 * Whole messages from a stream of raw server frames (unmasked, possibly
 * fragmented, split anywhere across chunks). Control frames come out as
 * they arrive; a malformed stream ends the iteration with an error.
 */
export async function* decodeServerFrames(
  chunks: ReadableStream<Uint8Array>,
): AsyncGenerator<{ opcode: number; payload: Uint8Array }> {
  let buffer = new Uint8Array(0);
  let fragments: Uint8Array[] = [];
  let fragmentOpcode = 0;
  let fragmentBytes = 0;
  for await (const chunk of chunks) {
    const joined = new Uint8Array(buffer.length + chunk.length);
    joined.set(buffer);
    joined.set(chunk, buffer.length);
    buffer = joined;
    while (buffer.length >= 2) {
      const view = new DataView(buffer.buffer, buffer.byteOffset);
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      const masked = (buffer[1] & 0x80) !== 0;
      let length = buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) break;
        length = view.getUint16(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) break;
        const long = view.getBigUint64(2);
        if (long > BigInt(MAX_MESSAGE_BYTES)) {
          throw new RangeError(`WebSocket frame of ${long} bytes is too big`);
        }
        length = Number(long);
        offset = 10;
      }
      const maskOffset = offset;
      if (masked) offset += 4;
      if (buffer.length < offset + length) break;
      const payload = buffer.slice(offset, offset + length);
      if (masked) {
        for (let i = 0; i < payload.length; i++) {
          payload[i] ^= buffer[maskOffset + (i & 3)];
        }
      }
      buffer = buffer.slice(offset + length);
      if (opcode >= 8) {
        yield { opcode, payload };
        continue;
      }
      if (opcode !== 0) {
        fragmentOpcode = opcode;
        fragments = [];
        fragmentBytes = 0;
      }
      fragments.push(payload);
      fragmentBytes += payload.length;
      if (fragmentBytes > MAX_MESSAGE_BYTES) {
        throw new RangeError(
          `WebSocket message over ${MAX_MESSAGE_BYTES} bytes`,
        );
      }
      if (fin) {
        const message = new Uint8Array(fragmentBytes);
        let at = 0;
        for (const part of fragments) {
          message.set(part, at);
          at += part.length;
        }
        fragments = [];
        fragmentBytes = 0;
        yield { opcode: fragmentOpcode, payload: message };
      }
    }
  }
}
