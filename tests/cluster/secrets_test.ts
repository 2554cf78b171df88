// The cluster's shared secrets (services/master/secrets.ts) and how role
// settings become a role's configuration file (services/agent/agent.ts).
import assert from "node:assert/strict";
import {
  ClusterSecrets,
  generateSecrets,
  withSecrets,
} from "../../services/master/secrets.ts";
import { settingsObject } from "../../services/agent/agent.ts";

Deno.test("each role gets only the secrets it needs", () => {
  const secrets = generateSecrets();
  ClusterSecrets.parse(secrets);
  const settings = withSecrets({ gateway: { mainHost: "a.test" } }, secrets);
  assert.deepEqual(settings.gateway, {
    mainHost: "a.test",
    token: secrets.webToken,
  });
  assert.deepEqual(settings.shell, { "gateway.token": secrets.webToken });
  assert.deepEqual(settings.storage, {
    diskSecret: secrets.diskSecret,
    "zone.secret": secrets.storageZoneSecret,
  });
  assert.equal(settings.worker, undefined);
  assert.equal(settings.coordinator, undefined);
  assert.notEqual(generateSecrets().diskSecret, secrets.diskSecret);
});

Deno.test("settings become a nested configuration, read as --set reads", () => {
  assert.deepEqual(
    settingsObject({
      "gateway.token": "00ff",
      "gateway.control.port": "7106",
      "nginx.enabled": "false",
      name: "plain text",
      secret: "123456789012345678901234567890",
    }),
    {
      gateway: { token: "00ff", control: { port: 7106 } },
      nginx: { enabled: false },
      name: "plain text",
      secret: "123456789012345678901234567890",
    },
  );
});
