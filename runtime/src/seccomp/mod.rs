//! Seccomp: compiles the spec's profile to a classic BPF program and installs it.
//!
//! The program checks the architecture (only the native one is allowed through; any other
//! gets the kill action, like libseccomp's default bad-arch action), then looks the system
//! call number up in a chain of blocks, one per system call named by the profile; a block
//! tries that call's rules in the profile's order (argument conditions compare 64-bit values
//! as two 32-bit halves) and falls back to the default action. Names this architecture does
//! not know are skipped, as runc does.

mod x86_64;

use crate::error::Error;
use crate::spec::{Seccomp, SeccompAction, SeccompArg, SeccompOp, Spec};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JGT_K: u16 = 0x05 | 0x20;
const BPF_JGE_K: u16 = 0x05 | 0x30;
const BPF_JSET_K: u16 = 0x05 | 0x40;
const BPF_AND_K: u16 = 0x04 | 0x50;
const BPF_RET_K: u16 = 0x06;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// A compiled filter.
pub type Program = Vec<libc::sock_filter>;

/// One rule of a system call: (return value, argument conditions).
type Rule<'a> = (u32, &'a [SeccompArg]);

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The number of a system call on this architecture.
pub fn syscall_number(name: &str) -> Option<u32> {
    x86_64::SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| x86_64::SYSCALLS[i].1)
}

fn ret_value(action: SeccompAction, errno: Option<u32>) -> u32 {
    match action {
        SeccompAction::Kill => 0,
        SeccompAction::KillProcess => 0x8000_0000,
        SeccompAction::Trap => 0x0003_0000,
        SeccompAction::Errno => 0x0005_0000 | (errno.unwrap_or(libc::EPERM as u32) & 0xffff),
        SeccompAction::Trace => 0x7ff0_0000 | (errno.unwrap_or(libc::ENOSYS as u32) & 0xffff),
        SeccompAction::Log => 0x7ffc_0000,
        SeccompAction::Allow => 0x7fff_0000,
    }
}

/// Code that falls through when `arg` holds and jumps to the end of the code plus `fail`
/// more instructions when it does not.
fn condition(arg: &SeccompArg) -> Vec<(libc::sock_filter, bool)> {
    // (instruction, its false branch targets FAIL)
    let lo_off = OFF_ARGS + 8 * arg.index;
    let hi_off = lo_off + 4;
    let (v, v2) = (arg.value, arg.value_two);
    let (vhi, vlo) = ((v >> 32) as u32, v as u32);
    let mut out: Vec<(libc::sock_filter, bool)> = Vec::new();
    match arg.op {
        SeccompOp::Eq | SeccompOp::Ne | SeccompOp::MaskedEq => {
            let (mhi, mlo, whi, wlo) = if arg.op == SeccompOp::MaskedEq {
                (vhi, vlo, (v2 >> 32) as u32, v2 as u32)
            } else {
                (u32::MAX, u32::MAX, vhi, vlo)
            };
            if arg.op == SeccompOp::Ne {
                // Holds unless both halves are equal.
                out.push((stmt(BPF_LD_W_ABS, hi_off), false));
                out.push((jump(BPF_JEQ_K, whi, 0, 2), false)); // hi differs -> holds (skip to end)
                out.push((stmt(BPF_LD_W_ABS, lo_off), false));
                out.push((jump(BPF_JEQ_K, wlo, 0xff, 0), true)); // both equal -> fail
                return out;
            }
            out.push((stmt(BPF_LD_W_ABS, hi_off), false));
            if mhi != u32::MAX {
                out.push((stmt(BPF_AND_K, mhi), false));
            }
            out.push((jump(BPF_JEQ_K, whi, 0, 0xff), true));
            out.push((stmt(BPF_LD_W_ABS, lo_off), false));
            if mlo != u32::MAX {
                out.push((stmt(BPF_AND_K, mlo), false));
            }
            out.push((jump(BPF_JEQ_K, wlo, 0, 0xff), true));
        }
        SeccompOp::Gt | SeccompOp::Ge | SeccompOp::Lt | SeccompOp::Le => {
            // hi > vhi: Gt/Ge hold, Lt/Le fail; hi < vhi: the reverse; equal: compare lo.
            let greater = matches!(arg.op, SeccompOp::Gt | SeccompOp::Ge);
            out.push((stmt(BPF_LD_W_ABS, hi_off), false));
            if greater {
                // hi > vhi -> holds (jump over the rest: 3 instructions)
                out.push((jump(BPF_JGT_K, vhi, 3, 0), false));
                out.push((jump(BPF_JEQ_K, vhi, 0, 0xff), true));
                out.push((stmt(BPF_LD_W_ABS, lo_off), false));
                let code = if arg.op == SeccompOp::Gt {
                    BPF_JGT_K
                } else {
                    BPF_JGE_K
                };
                out.push((jump(code, vlo, 0, 0xff), true));
            } else {
                // hi < vhi -> holds; hi > vhi -> fails
                out.push((jump(BPF_JGE_K, vhi, 0, 3), false));
                out.push((jump(BPF_JEQ_K, vhi, 0, 0xff), true));
                out.push((stmt(BPF_LD_W_ABS, lo_off), false));
                // Lt: lo >= vlo fails; Le: lo > vlo fails.
                let code = if arg.op == SeccompOp::Lt {
                    BPF_JGE_K
                } else {
                    BPF_JGT_K
                };
                out.push((jump(code, vlo, 0xff, 0), true));
            }
        }
    }
    out
}

/// Compiles the spec's `linux.seccomp` profile, if it has one.
pub fn compile_spec(spec: &Spec) -> crate::error::Result<Option<Program>> {
    spec.linux
        .seccomp
        .as_ref()
        .map(|s| {
            compile(s).map_err(|reason| Error::InvalidSpec {
                field: "linux.seccomp".into(),
                reason,
            })
        })
        .transpose()
}

/// Compiles `profile`; an error names what is wrong with it.
pub fn compile(profile: &Seccomp) -> Result<Program, String> {
    let default = ret_value(profile.default_action, profile.default_errno_ret);
    for a in &profile.architectures {
        if !a.starts_with("SCMP_ARCH_") {
            return Err(format!("unknown architecture {a:?}"));
        }
    }
    // Rules per system call number, in profile order.
    let mut by_nr: Vec<(u32, Vec<Rule<'_>>)> = Vec::new();
    for (i, rule) in profile.syscalls.iter().enumerate() {
        if rule.args.iter().any(|a| a.index > 5) {
            return Err(format!("syscalls[{i}]: argument index above 5"));
        }
        if rule.names.is_empty() {
            return Err(format!("syscalls[{i}]: no names"));
        }
        let ret = ret_value(rule.action, rule.errno_ret);
        for name in &rule.names {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            match by_nr.iter_mut().find(|(n, _)| *n == nr) {
                Some((_, rules)) => rules.push((ret, &rule.args)),
                None => by_nr.push((nr, vec![(ret, &rule.args)])),
            }
        }
    }
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, 0x8000_0000),
        stmt(BPF_LD_W_ABS, OFF_NR),
        // x32 system calls get the default action.
        jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, default),
    ];
    for (nr, rules) in by_nr {
        let mut block: Vec<libc::sock_filter> = Vec::new();
        let mut unconditional = false;
        for (ret, args) in rules {
            if unconditional {
                break;
            }
            let mut code: Vec<(libc::sock_filter, bool)> = Vec::new();
            for a in args {
                code.extend(condition(a));
            }
            let len = code.len();
            if len + 1 > 250 {
                return Err(format!("rule for system call {nr}: too many conditions"));
            }
            for (i, (mut ins, to_fail)) in code.into_iter().enumerate() {
                if to_fail {
                    // FAIL is just after the `ret` that ends this rule.
                    let off = (len - i) as u8;
                    if ins.jt == 0xff {
                        ins.jt = off;
                    }
                    if ins.jf == 0xff {
                        ins.jf = off;
                    }
                }
                block.push(ins);
            }
            block.push(stmt(BPF_RET_K, ret));
            unconditional = args.is_empty();
        }
        if !unconditional {
            block.push(stmt(BPF_RET_K, default));
        }
        prog.push(jump(BPF_JEQ_K, nr, 1, 0));
        prog.push(stmt(BPF_JMP_JA, block.len() as u32));
        prog.extend(block);
    }
    prog.push(stmt(BPF_RET_K, default));
    if prog.len() > 4096 {
        return Err(format!(
            "the profile compiles to {} BPF instructions (at most 4096)",
            prog.len()
        ));
    }
    Ok(prog)
}

/// Installs `prog` on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn install(prog: &Program) -> nix::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_known() {
        assert!(x86_64::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdirat"), Some(258));
        assert_eq!(syscall_number("nope"), None);
    }

    #[test]
    fn compiles_rules_with_arguments() {
        let profile: Seccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }))
        .expect("profile");
        let prog = compile(&profile).expect("compile");
        assert!(prog.len() > 10);
    }
}
