//! The original service's `KV_API_DISABLE_READ` / `KV_API_DISABLE_WRITE`: one process could be
//! made write-only or read-only. Here the role is the binary, so a flag that agrees with it is
//! accepted (a seed env file keeps working) and one that contradicts it stops the process at
//! start-up naming the binary that does what was asked, instead of silently serving the other half.

use super::catalogue::Role;
use super::{Env, SettingsError};

pub const DISABLE_READ: &str = "KV_API_DISABLE_READ";
pub const DISABLE_WRITE: &str = "KV_API_DISABLE_WRITE";

/// `Ok` unless the flags ask this binary not to do the one thing it does.
pub fn check_role_flags(env: &Env, role: Role) -> Result<(), SettingsError> {
    let disable_read = env.bool(DISABLE_READ, false)?;
    let disable_write = env.bool(DISABLE_WRITE, false)?;
    if disable_read && disable_write {
        return Err(SettingsError::new(
            DISABLE_READ,
            format!(
                "true together with {DISABLE_WRITE}=true leaves nothing to serve; \
                 kv-writer takes the writes and kv-reader serves the reads: run the one you \
                 need and leave both flags unset"
            ),
        ));
    }
    match role {
        Role::Reader if disable_read => Err(SettingsError::new(
            DISABLE_READ,
            "true asks for a write-only instance, which is kv-writer: kv-reader only serves \
             reads, so run kv-writer with this environment (and unset the flag here)",
        )),
        Role::Writer if disable_write => Err(SettingsError::new(
            DISABLE_WRITE,
            "true asks for a read-only instance, which is kv-reader: kv-writer only takes \
             writes, so run kv-reader with this environment (and unset the flag here)",
        )),
        Role::Reader | Role::Writer => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(role: Role, pairs: &[(&str, &str)]) -> Result<(), SettingsError> {
        check_role_flags(&Env::from_pairs(pairs.iter().copied()).expect("env"), role)
    }

    #[test]
    fn a_reader_told_to_disable_reads_is_refused_naming_kv_writer() {
        let err = check(Role::Reader, &[(DISABLE_READ, "true")]).expect_err("must fail");
        assert_eq!(err.var, DISABLE_READ);
        assert!(err.to_string().contains("kv-writer"), "{err}");
    }

    #[test]
    fn a_writer_told_to_disable_writes_is_refused_naming_kv_reader() {
        let err = check(Role::Writer, &[(DISABLE_WRITE, "True")]).expect_err("must fail");
        assert_eq!(err.var, DISABLE_WRITE);
        assert!(err.to_string().contains("kv-reader"), "{err}");
    }

    #[test]
    fn a_flag_that_agrees_with_the_role_is_accepted() {
        check(Role::Reader, &[(DISABLE_WRITE, "true")]).expect("a read-only reader");
        check(Role::Writer, &[(DISABLE_READ, "true")]).expect("a write-only writer");
        for role in [Role::Reader, Role::Writer] {
            check(role, &[]).expect("no flags");
            check(role, &[(DISABLE_READ, "false"), (DISABLE_WRITE, "False")]).expect("off");
        }
    }

    #[test]
    fn both_flags_at_once_are_refused_by_either_binary() {
        for role in [Role::Reader, Role::Writer] {
            let err = check(role, &[(DISABLE_READ, "true"), (DISABLE_WRITE, "true")])
                .expect_err("must fail");
            assert_eq!(err.var, DISABLE_READ);
        }
    }

    #[test]
    fn a_flag_that_is_no_bool_names_its_variable() {
        let err = check(Role::Reader, &[(DISABLE_WRITE, "sometimes")]).expect_err("must fail");
        assert_eq!(err.var, DISABLE_WRITE);
    }
}
