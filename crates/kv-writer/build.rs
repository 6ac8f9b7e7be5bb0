// See crates/build-git-revision.rs.
include!("../build-git-revision.rs");
