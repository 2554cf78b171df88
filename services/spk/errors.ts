/**
 * The one error type of the package reader, so that callers can tell a bad
 * package from their own bugs and report which check refused it.
 *
 * @module
 */

/** Which check refused a package. */
export type SpkErrorKind =
  /** The file does not start with the .spk magic number. */
  | "bad-magic"
  /** The xz stream or a Cap'n Proto message in it is malformed. */
  | "corrupt"
  /** The signature message is missing, empty or of the wrong shape. */
  | "unsigned"
  /** The signature does not verify, or signs different contents. */
  | "bad-signature"
  /** The package, a file in it, or the file count passes a limit. */
  | "too-large"
  /** A file name is empty, ".", "..", has a "/" or a NUL, or repeats. */
  | "bad-name"
  /** A symlink points outside the package. */
  | "symlink-escape"
  /** The manifest is missing or malformed. */
  | "bad-manifest";

/** Raised for every package that fails a check; `kind` names the check. */
export class SpkError extends Error {
  readonly kind: SpkErrorKind;

  constructor(kind: SpkErrorKind, message: string, options?: ErrorOptions) {
    super(`${kind}: ${message}`, options);
    this.name = "SpkError";
    this.kind = kind;
  }
}
