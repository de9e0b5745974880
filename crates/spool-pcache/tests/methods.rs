//! The wrapper's bookkeeping, driven through SQLite's page-cache interface directly: what a
//! truncate must drop is dropped (pages renumbered past the end, a page left parked on the lock
//! page, a page created past the end), and it is skipped only when nothing is at or above its
//! limit. One test in this binary: the page cache can be chosen only before SQLite initializes.
#![allow(clippy::unwrap_used)]

use rusqlite::ffi;
use std::ffi::c_uint;

/// The page number `balance_nonroot` parks a page on, for 4 KiB pages.
const LOCK: c_uint = 0x4000_0000 / 4096 + 1;

struct Driver {
    m: ffi::sqlite3_pcache_methods2,
    p: *mut ffi::sqlite3_pcache,
}

impl Driver {
    fn fetch(&self, key: c_uint, create: i32) -> *mut ffi::sqlite3_pcache_page {
        // SAFETY: the cache is live; SQLite's pager makes the same calls.
        unsafe { (self.m.xFetch.unwrap())(self.p, key, create) }
    }
    fn has(&self, key: c_uint) -> bool {
        let page = self.fetch(key, 0);
        if !page.is_null() {
            self.unpin(page);
        }
        !page.is_null()
    }
    fn unpin(&self, page: *mut ffi::sqlite3_pcache_page) {
        // SAFETY: `page` was fetched from this cache and is pinned.
        unsafe { (self.m.xUnpin.unwrap())(self.p, page, 0) }
    }
    /// Renumbers the cached page `from` to `to`, as the pager does (pinned while it moves).
    fn rekey(&self, from: c_uint, to: c_uint) {
        let page = self.fetch(from, 0);
        assert!(!page.is_null(), "page {from} is cached");
        // SAFETY: `page` is this cache's page `from`; nothing is cached at `to`.
        unsafe { (self.m.xRekey.unwrap())(self.p, page, from, to) };
        self.unpin(page);
    }
    fn truncate(&self, limit: c_uint) {
        // SAFETY: the cache is live.
        unsafe { (self.m.xTruncate.unwrap())(self.p, limit) }
    }
    fn pages(&self) -> i32 {
        // SAFETY: the cache is live.
        unsafe { (self.m.xPagecount.unwrap())(self.p) }
    }
}

#[test]
fn a_truncate_drops_every_page_at_or_above_its_limit_and_is_skipped_only_when_there_is_none() {
    spool_pcache::install().unwrap();
    // SAFETY: an all-zero methods struct is valid; GETPCACHE2 fills it with the installed one
    // (the wrapper's), and SQLite is initialized before any cache is created.
    let m = unsafe {
        let mut m: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
        assert_eq!(
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, &mut m as *mut _),
            ffi::SQLITE_OK
        );
        assert_eq!(ffi::sqlite3_initialize(), ffi::SQLITE_OK);
        m
    };
    // SAFETY: a 4 KiB-page purgeable cache, as a pager creates one.
    let p = unsafe { (m.xCreate.unwrap())(4096, 256, 1) };
    assert!(!p.is_null());
    // SAFETY: the cache is live.
    unsafe { (m.xCachesize.unwrap())(p, 1000) };
    let d = Driver { m, p };
    let skipped = spool_pcache::truncates_skipped;

    for key in 1..=100 {
        let page = d.fetch(key, 2);
        assert!(!page.is_null());
        d.unpin(page);
    }
    // balance_nonroot's swap: 50 -> lock page, 60 -> 50, the parked one -> 60.
    d.rekey(50, LOCK);
    d.rekey(60, 50);
    d.rekey(LOCK, 60);
    let before = skipped();
    d.truncate(101);
    assert_eq!(skipped(), before + 1, "nothing at 101 or above: skipped");
    assert_eq!(d.pages(), 100);

    // A page left on the lock page must go.
    d.rekey(70, LOCK);
    d.truncate(101);
    assert!(!d.has(LOCK), "the parked page was dropped");
    // A page renumbered past the end must go.
    d.rekey(80, 500);
    d.truncate(101);
    assert!(!d.has(500), "the page renumbered to 500 was dropped");
    // A page created past the end must go.
    let page = d.fetch(200, 1);
    assert!(!page.is_null());
    d.unpin(page);
    d.truncate(101);
    assert!(!d.has(200), "the page created at 200 was dropped");
    assert_eq!(
        skipped(),
        before + 1,
        "none of those three truncates was skipped"
    );
    assert_eq!(d.pages(), 98);

    // Trimming into the cached range drops the pages from the limit up, and only those.
    d.truncate(51);
    assert_eq!(d.pages(), 50);
    assert!(d.has(50) && !d.has(51) && !d.has(60));
    d.truncate(51);
    assert_eq!(
        skipped(),
        before + 2,
        "after the trim nothing is at 51 or above"
    );

    // SAFETY: the cache is live and destroyed once.
    unsafe { (m.xDestroy.unwrap())(p) };
}
