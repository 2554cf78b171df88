/**
 * The cluster's shared secrets: made once by the master, kept in the
 * cluster description (mode 0600), and sent inside role assignments only
 * to the roles that need each one. They are never logged.
 *
 * - `webToken`: shells present it when they register with a gateway.
 * - `diskSecret`: seals the storage nodes' ownership records; every node
 *   of one disk must share it.
 * - `storageZoneSecret`: seals SturdyRefs of the storage trust zone.
 *
 * @module
 */
import { z } from "zod";
import type { RoleName } from "./assign.ts";

const hex = (bytes: number) =>
  z.string().regex(
    new RegExp(`^[0-9a-f]{${bytes * 2}}$`),
    `${bytes * 2} lower-case hex digits`,
  );

/** The secrets as the cluster description keeps them. */
export const ClusterSecrets = z.strictObject({
  webToken: hex(24),
  diskSecret: hex(32),
  storageZoneSecret: hex(32),
});
/** See {@link ClusterSecrets}. */
export type ClusterSecrets = z.infer<typeof ClusterSecrets>;

function randomHex(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

/** Fresh secrets for a new cluster. */
export function generateSecrets(): ClusterSecrets {
  return {
    webToken: randomHex(24),
    diskSecret: randomHex(32),
    storageZoneSecret: randomHex(32),
  };
}

/**
 * Each role's settings with the secrets it needs added (as configuration
 * paths of that role): the gateway and the shell get the web token, storage
 * gets the disk and zone secrets, and the others get none.
 *
 * @example
 * ```ts
 * import { generateSecrets, withSecrets } from "./secrets.ts";
 * const settings = withSecrets({}, generateSecrets());
 * if (settings.worker !== undefined) throw new Error("workers get none");
 * ```
 */
export function withSecrets(
  roleSettings: Partial<Record<RoleName, Record<string, string>>>,
  secrets: ClusterSecrets,
): Partial<Record<RoleName, Record<string, string>>> {
  const added: Partial<Record<RoleName, Record<string, string>>> = {
    gateway: { token: secrets.webToken },
    shell: { "gateway.token": secrets.webToken },
    storage: {
      diskSecret: secrets.diskSecret,
      "zone.secret": secrets.storageZoneSecret,
    },
  };
  const result = { ...roleSettings };
  for (const [role, extra] of Object.entries(added)) {
    const name = role as RoleName;
    result[name] = { ...result[name], ...extra };
  }
  return result;
}
