/**
 * The grain's seccomp filter, assembled here as classic BPF and handed to
 * bubblewrap (`--seccomp FD`), which loads it right before it runs the
 * app. x86-64 only; any other architecture or the x32 ABI is killed.
 *
 * What it refuses, and why:
 * - sockets of any family but AF_UNIX, AF_INET and AF_INET6 (raw packet,
 *   netlink, bluetooth, ... reach kernel code that grains never need);
 * - new namespaces (clone/unshare/setns), mount and the new mount API,
 *   pivot_root, chroot: the grain's view of the filesystem is fixed;
 * - ptrace, process_vm_*, kcmp, perf_event_open, bpf, userfaultfd,
 *   io_uring, keyctl: large attack surface, no use to an app;
 * - module loading, kexec, reboot, swap, clock setting, quotas, acct,
 *   iopl/ioperm, syslog: machine-wide effects;
 * - ioctl TIOCSTI, which would type into a terminal outside.
 * Refused calls fail with EPERM (sockets: EAFNOSUPPORT; clone3: ENOSYS so
 * that libc falls back to clone, whose flags the filter can check).
 *
 * @module
 */

// Offsets into struct seccomp_data.
const NR = 0;
const ARCH = 4;
const ARG0_LOW = 16;
const ARG1_LOW = 24;

const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;

const RET_KILL_PROCESS = 0x80000000;
const RET_ALLOW = 0x7fff0000;
const retErrno = (errno: number) => 0x00050000 | errno;

const EPERM = 1;
const ENOSYS = 38;
const EAFNOSUPPORT = 97;

// BPF opcodes used below.
const LD_W_ABS = 0x20;
const JEQ_K = 0x15;
const JGE_K = 0x35;
const JSET_K = 0x45;
const RET_K = 0x06;

/** x86-64 numbers of the calls refused outright with EPERM. */
const REFUSED: Record<string, number> = {
  ptrace: 101,
  syslog: 103,
  personality: 135,
  vhangup: 153,
  pivot_root: 155,
  adjtimex: 159,
  chroot: 161,
  acct: 163,
  settimeofday: 164,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  iopl: 172,
  ioperm: 173,
  init_module: 175,
  delete_module: 176,
  quotactl: 179,
  lookup_dcookie: 212,
  clock_settime: 227,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  clock_adjtime: 305,
  setns: 308,
  process_vm_readv: 310,
  process_vm_writev: 311,
  kcmp: 312,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  pidfd_getfd: 438,
  mount_setattr: 442,
};

const SYS_IOCTL = 16;
const SYS_SOCKET = 41;
const SYS_SOCKETPAIR = 53;
const SYS_CLONE = 56;
const SYS_CLONE3 = 435;

const TIOCSTI = 0x5412;
const AF_UNIX = 1;
const AF_INET = 2;
const AF_INET6 = 10;

/** CLONE_NEW* flags: namespaces (mount, cgroup, uts, ipc, user, pid, net,
 * time). */
const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 |
  0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;

type Instruction = [code: number, jt: number, jf: number, k: number];

function load(offset: number): Instruction {
  return [LD_W_ABS, 0, 0, offset];
}

function ret(value: number): Instruction {
  return [RET_K, 0, 0, value];
}

/** "If A == k, return `action`; else go on", as two instructions. */
function refuseIf(k: number, action: number): Instruction[] {
  return [[JEQ_K, 0, 1, k], ret(action)];
}

/** The filter's instructions, in order. */
export function grainFilterProgram(): Instruction[] {
  const program: Instruction[] = [
    load(ARCH),
    [JEQ_K, 1, 0, AUDIT_ARCH_X86_64],
    ret(RET_KILL_PROCESS),
    load(NR),
    [JGE_K, 0, 1, X32_SYSCALL_BIT],
    ret(RET_KILL_PROCESS),
  ];
  for (const nr of Object.values(REFUSED)) {
    program.push(...refuseIf(nr, retErrno(EPERM)));
  }
  program.push(...refuseIf(SYS_CLONE3, retErrno(ENOSYS)));

  // Each argument check below starts with A = syscall number and leaves
  // it so; a check that does not match falls through to the next one.
  const argumentCheck = (nr: number, body: Instruction[]) => {
    // Skip the body (and the reload of NR after it) unless nr matches.
    program.push([JEQ_K, 0, body.length + 1, nr], ...body, load(NR));
  };
  argumentCheck(SYS_CLONE, [
    load(ARG0_LOW),
    [JSET_K, 0, 1, CLONE_NAMESPACE_FLAGS],
    ret(retErrno(EPERM)),
  ]);
  argumentCheck(SYS_IOCTL, [
    load(ARG1_LOW),
    [JEQ_K, 0, 1, TIOCSTI],
    ret(retErrno(EPERM)),
  ]);
  for (const nr of [SYS_SOCKET, SYS_SOCKETPAIR]) {
    argumentCheck(nr, [
      load(ARG0_LOW),
      [JEQ_K, 3, 0, AF_UNIX],
      [JEQ_K, 2, 0, AF_INET],
      [JEQ_K, 1, 0, AF_INET6],
      ret(retErrno(EAFNOSUPPORT)),
    ]);
  }
  program.push(ret(RET_ALLOW));
  return program;
}

/**
 * The filter as bubblewrap reads it: an array of struct sock_filter
 * (u16 code, u8 jt, u8 jf, u32 k), native byte order.
 *
 * @example
 * ```ts
 * import { grainFilterBytes } from "./seccomp.ts";
 * const bytes = grainFilterBytes();
 * if (bytes.length % 8 !== 0) throw new Error("not whole instructions");
 * ```
 */
export function grainFilterBytes(): Uint8Array {
  const program = grainFilterProgram();
  if (program.length > 4096) {
    throw new Error(`filter has ${program.length} instructions, max 4096`);
  }
  const bytes = new Uint8Array(program.length * 8);
  const view = new DataView(bytes.buffer);
  program.forEach(([code, jt, jf, k], i) => {
    view.setUint16(i * 8, code, true);
    view.setUint8(i * 8 + 2, jt);
    view.setUint8(i * 8 + 3, jf);
    view.setUint32(i * 8 + 4, k >>> 0, true);
  });
  return bytes;
}
