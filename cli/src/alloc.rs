//! The binary's global allocator: mimalloc, called the way its own API
//! intends.
//!
//! mimalloc frees a block allocated by another thread without taking that
//! thread's arena lock, which glibc's malloc does (a publisher allocates
//! what a consumer or the runtime's core thread frees). A service linking
//! dashi chooses its own allocator; this one is the `dashi` binary's.
//!
//! Why not the `mimalloc` crate's `MiMalloc`: it sends every request through
//! `mi_malloc_aligned`, whatever the alignment. That call's fast path needs
//! a free block already in the size's page; when the page has run dry it
//! takes mimalloc's generic aligned path, which for a size that is not a
//! power of two over-allocates (`size + align - 1`) from the next size class
//! up. The block is freed back to that larger class, so the first class
//! never refills and every later allocation of that size pays the slow path
//! (about 240 instructions more a call, once per delivery for the unacked
//! slot). Here a request whose alignment every mimalloc block already has
//! (8 bytes: blocks are word multiples from 16-aligned page starts) uses the
//! plain `mi_malloc` family, as Rust's own `System` allocator uses `malloc`;
//! only larger alignments use the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every block `mi_malloc` returns has (a machine word).
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module docs).
pub(crate) struct Mimalloc;

impl Mimalloc {
    #[inline]
    fn plain(align: usize) -> bool {
        align <= PLAIN_ALIGN
    }
}

// SAFETY: every method returns a block from mimalloc that is at least
// `layout.size()` bytes and aligned to `layout.align()` (the plain calls
// only for alignments mimalloc gives every block, the aligned calls
// otherwise), or null on failure; `dealloc` and `realloc` receive only
// blocks this allocator returned, and `mi_free` / `mi_realloc*` accept any
// mimalloc block whichever call made it.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; their contract is stated on the impl.
        unsafe {
            if Self::plain(layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if Self::plain(layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the block
        // keeps `layout.align()` (the plain call only for alignments every
        // block has).
        unsafe {
            if Self::plain(layout.align()) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment comes back aligned, writable, and intact
    /// across a realloc, on both the plain and the aligned calls.
    #[test]
    fn blocks_have_the_layouts_alignment_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=300).chain([1023, 1024, 1025, 4000, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; the block is written
                // within its size and freed once, by this allocator.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    let q = a.realloc(p, layout, size * 3);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    for i in 0..size {
                        assert_eq!(q.add(i).read(), i as u8);
                    }
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
