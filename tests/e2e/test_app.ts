/**
 * A small signed test package built with the project's packer
 * (services/spk/write.ts). Its program is never run by the stand-in
 * runner; the package exists so that uploads go through real
 * verification.
 *
 * @module
 */
import { buildSpk, generateKey } from "../../services/spk/write.ts";

/** Builds the "Notes" test package and returns its bytes. */
export async function buildNotesSpk(): Promise<Uint8Array> {
  const encoder = new TextEncoder();
  const tree = new Map([
    ["notes", {
      kind: "executable" as const,
      data: encoder.encode("#!/bin/sh\nexec sleep infinity\n"),
    }],
    ["README", {
      kind: "regular" as const,
      data: encoder.encode("A test app for the shell's end-to-end tests.\n"),
    }],
  ]);
  const command = { argv: ["/notes"], environ: [] };
  return await buildSpk(tree, {
    appTitle: "Notes",
    appVersion: 1,
    appMarketingVersion: "1.0.0",
    actions: [{ title: "New note", nounPhrase: "note", command }],
    continueCommand: command,
  }, generateKey());
}
