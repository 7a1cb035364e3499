//! uniffi's generator, built from this crate's own uniffi version.

fn main() {
    uniffi::uniffi_bindgen_main()
}
