//! `sqlx::migrate!` embeds `migrations/` at compile time, but Cargo does not know it reads
//! them: without this, a new migration file leaves a binary built before it, which then
//! refuses a database migrated by a newer one ("migration N was previously applied but is
//! missing").
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
