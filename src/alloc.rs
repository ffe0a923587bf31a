//! The allocator's one knob the server turns: after a request that held a
//! lot of transient memory, its worker hands the freed pages back to the
//! OS at once, instead of after mimalloc's purge delay (which only runs on
//! later allocator activity, so an idle server would keep its peak RSS).
//!
//! The binary's global allocator is mimalloc (`main.rs`); where it is not
//! (a library user's binary), this still runs mimalloc's own collection,
//! which then holds nothing.

/// Estimated peak bytes from which a request's worker releases memory after it.
pub const RELEASE_AFTER_BYTES: u64 = 32 << 20;

/// Returns the calling thread's freed memory, and any pending purge, to the OS.
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
