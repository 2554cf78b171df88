/**
 * An S3-compatible bucket as a disk, through @aws-sdk/client-s3. Conditional
 * writes map to `If-None-Match: *` and `If-Match: ETAG`, which S3 and Ceph
 * radosgw evaluate atomically, so storage nodes sharing a bucket cannot
 * overwrite each other's updates.
 *
 * The credentials stay inside the client object; nothing here logs them or
 * puts them in an error message.
 *
 * @module
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import {
  checkName,
  ConditionFailedError,
  type Disk,
  DiskError,
  type DiskObject,
  type WriteCondition,
} from "./disk.ts";

/** Where the bucket is and how to sign requests to it. */
export interface S3DiskOptions {
  /** For example `http://127.0.0.1:7480`. */
  endpoint: string;
  bucket: string;
  region?: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** A prefix under which every name is stored, ending with `/` if set. */
  prefix?: string;
}

function statusOf(error: unknown): number | undefined {
  const metadata = (error as { $metadata?: { httpStatusCode?: number } })
    ?.$metadata;
  return metadata?.httpStatusCode;
}

/** A short reason from an SDK error, for messages (SDK messages carry no
 * credentials). */
function reasonOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error).slice(0, 200);
  return `${error.name}: ${error.message}`.slice(0, 200);
}

function stripQuotes(etag: string | undefined): string {
  if (etag === undefined) throw new DiskError("S3 reply has no ETag");
  return etag.replace(/^"|"$/g, "");
}

/** A bucket (or a prefix of one) of an S3-compatible store. */
export class S3Disk implements Disk {
  readonly bucket: string;
  readonly prefix: string;
  #client: S3Client;

  constructor(options: S3DiskOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? "";
    this.#client = new S3Client({
      endpoint: options.endpoint,
      region: options.region ?? "us-east-1",
      forcePathStyle: true,
      credentials: {
        accessKeyId: options.accessKeyId,
        secretAccessKey: options.secretAccessKey,
      },
      // The store's own retries would turn a refused conditional write into
      // a second attempt; the object store retries where that is safe.
      maxAttempts: 3,
      // Checksums of recent SDKs add a trailer radosgw may not accept.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
  }

  #key(name: string): string {
    checkName(name);
    return this.prefix + name;
  }

  async get(name: string): Promise<DiskObject | null> {
    const Key = this.#key(name);
    try {
      const reply = await this.#client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key }),
      );
      if (reply.Body === undefined) {
        throw new DiskError(`S3 reply for ${name} has no body`);
      }
      const data = await reply.Body.transformToByteArray();
      return { data, etag: stripQuotes(reply.ETag) };
    } catch (error) {
      if (error instanceof DiskError) throw error;
      if (statusOf(error) === 404) return null;
      throw new DiskError(
        `cannot read ${name} from S3: ${reasonOf(error)}`,
        { cause: error },
      );
    }
  }

  async put(
    name: string,
    data: Uint8Array,
    condition?: WriteCondition,
  ): Promise<string> {
    const Key = this.#key(name);
    try {
      const reply = await this.#client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key,
          Body: data,
          ContentLength: data.length,
          IfNoneMatch: condition !== undefined && "ifNoneMatch" in condition
            ? "*"
            : undefined,
          IfMatch: condition !== undefined && "ifMatch" in condition
            ? condition.ifMatch
            : undefined,
        }),
      );
      return stripQuotes(reply.ETag);
    } catch (error) {
      const status = statusOf(error);
      // 412: the condition failed. 409: a concurrent conditional write to
      // the same key was in progress; either way another writer won.
      // 404 with If-Match: the object was deleted meanwhile.
      if (
        condition !== undefined &&
        (status === 412 || status === 409 || status === 404)
      ) {
        throw new ConditionFailedError(name, condition);
      }
      throw new DiskError(
        `cannot write ${name} to S3 (status ${status}): ${reasonOf(error)}`,
        { cause: error },
      );
    }
  }

  async delete(name: string): Promise<void> {
    const Key = this.#key(name);
    try {
      await this.#client.send(
        new DeleteObjectCommand({ Bucket: this.bucket, Key }),
      );
    } catch (error) {
      if (statusOf(error) === 404) return;
      throw new DiskError(`cannot delete ${name} from S3`, { cause: error });
    }
  }

  async list(prefix: string): Promise<string[]> {
    if (!prefix.endsWith("/")) {
      throw new RangeError(`disk prefix ${JSON.stringify(prefix)} must end /`);
    }
    checkName(prefix.slice(0, -1));
    const names: string[] = [];
    let ContinuationToken: string | undefined;
    do {
      let reply;
      try {
        reply = await this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            ContinuationToken,
          }),
        );
      } catch (error) {
        throw new DiskError(`cannot list ${prefix} in S3`, { cause: error });
      }
      for (const item of reply.Contents ?? []) {
        if (item.Key !== undefined) {
          names.push(item.Key.slice(this.prefix.length));
        }
      }
      ContinuationToken = reply.IsTruncated
        ? reply.NextContinuationToken
        : undefined;
    } while (ContinuationToken !== undefined);
    return names.sort();
  }

  close(): Promise<void> {
    this.#client.destroy();
    return Promise.resolve();
  }
}
