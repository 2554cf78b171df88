/**
 * Binds a sealed UDP network and closes it again: run by network_test.ts
 * with exactly the permissions sealedUdpPermissions() names, to prove they
 * suffice. Prints `bound ADDRESS`.
 *
 * @module
 */

import { VatIdentity } from "../../vat_id.ts";
import { SealedUdpNetwork } from "../network.ts";

const network = await SealedUdpNetwork.create({
  identity: VatIdentity.generate(),
});
console.log(`bound ${network.address}`);
await network.close();
