//! Link options for libp11gate.so.

fn main() {
    // Never unload p11gate (DF_1_NODELETE): the upstream modules it loads stay loaded for the
    // life of the process and hold p11gate's mutex callbacks, so unmapping p11gate after a
    // dlclose() would leave them calling into nothing (a crash at exit at the latest).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
