//! SQLite's own page cache (pcache1), with one needless scan taken out.
//!
//! When SQLite rebalances a b-tree it renumbers the new pages into ascending order, parking one
//! page on a scratch number on the way: the lock page, `1 GiB / page size + 1` (`balance_nonroot`
//! in btree.c). pcache1 remembers the largest page number it has held since its last truncate,
//! and every commit truncates the cache to the database's size. So after any commit that
//! rebalanced a page, the remembered number lies far beyond the end of a database under 1 GiB,
//! and pcache1 visits every hash slot and every cached page (`pcache1TruncateUnsafe`, "the
//! general case") to find nothing to drop. With spool's 32 MiB writer cache (about 8,000 pages)
//! `perf` put 9–11% of the server's CPU there during end-to-end runs.
//!
//! [`install`] puts a wrapper in front of pcache1. Every call is forwarded. The wrapper keeps its
//! own bound on the page numbers each cache holds, in which a page parked on the lock page does
//! not count while it is parked; a truncate whose limit is above that bound has nothing to drop
//! and is not forwarded. Memory, eviction and the pages themselves stay pcache1's. When the
//! bookkeeping cannot be sure (a page left parked, a page fetched at the lock page), the truncate
//! is forwarded, which is what SQLite does without the wrapper.
//!
//! This crate holds the only `unsafe` code of spool: the page-cache interface is C's.

use rusqlite::ffi;
use std::ffi::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// SQLite's `PENDING_BYTE` (changed only by a test-control call no release build makes).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// pcache1, as SQLite reported it before the wrapper replaced it: its argument and methods.
struct Inner {
    arg: *mut c_void,
    init: unsafe extern "C" fn(*mut c_void) -> c_int,
    shutdown: unsafe extern "C" fn(*mut c_void),
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> *mut ffi::sqlite3_pcache,
    cachesize: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int),
    pagecount: unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int,
    fetch: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        c_uint,
        c_int,
    ) -> *mut ffi::sqlite3_pcache_page,
    unpin: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_int),
    rekey: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        *mut ffi::sqlite3_pcache_page,
        c_uint,
        c_uint,
    ),
    truncate: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint),
    destroy: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
    shrink: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
}

// SAFETY: the struct holds C function pointers and pcache1's argument (null), written once
// before the wrapper is installed and only read afterwards. The calls through them into one
// cache are serialized by whoever serializes its connection (SQLite's connection mutex, or
// rusqlite's ownership of a `Connection` opened with SQLITE_OPEN_NO_MUTEX), as for pcache1.
unsafe impl Sync for Inner {}
// SAFETY: as for `Sync`.
unsafe impl Send for Inner {}

static INNER: OnceLock<Inner> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// One cache (one per pager): pcache1's, and what the wrapper knows of its page numbers.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// The scratch number `balance_nonroot` parks a page on.
    lock_page: c_uint,
    /// No page of the cache has a larger number, pages parked on `lock_page` aside.
    bound: AtomicU32,
    /// Pages parked on `lock_page` now.
    parked: AtomicU32,
}

/// Puts the wrapper in front of SQLite's default page cache, for every connection the process
/// opens afterwards. SQLite takes a page cache only before it initializes, so this must run
/// before the process first uses SQLite, while no other thread can (SQLite's own check of that
/// is not synchronized); later calls return what the first did.
///
/// # Errors
/// SQLite was already initialized (then nothing changes), or its default cache lacks a method.
pub fn install() -> Result<(), String> {
    INSTALLED.get_or_init(install_once).clone()
}

/// Truncates the wrapper found nothing to drop and did not forward, since the process started.
pub fn truncates_skipped() -> u64 {
    SKIPPED.load(Relaxed)
}

fn install_once() -> Result<(), String> {
    // SAFETY: an all-zero methods struct is valid (every method `None`, a null argument).
    let mut m: ffi::sqlite3_pcache_methods2 = unsafe { std::mem::zeroed() };
    // SAFETY: SQLITE_CONFIG_GETPCACHE2 takes one pointer to a methods struct, which it fills.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_GETPCACHE2,
            &mut m as *mut ffi::sqlite3_pcache_methods2,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(format!(
            "SQLite is already initialized (sqlite3_config returned {rc})"
        ));
    }
    let (
        Some(init),
        Some(shutdown),
        Some(create),
        Some(cachesize),
        Some(pagecount),
        Some(fetch),
        Some(unpin),
        Some(rekey),
        Some(truncate),
        Some(destroy),
        Some(shrink),
    ) = (
        m.xInit,
        m.xShutdown,
        m.xCreate,
        m.xCachesize,
        m.xPagecount,
        m.xFetch,
        m.xUnpin,
        m.xRekey,
        m.xTruncate,
        m.xDestroy,
        m.xShrink,
    )
    else {
        return Err("SQLite's page cache lacks a method".into());
    };
    let inner = Inner {
        arg: m.pArg,
        init,
        shutdown,
        create,
        cachesize,
        pagecount,
        fetch,
        unpin,
        rekey,
        truncate,
        destroy,
        shrink,
    };
    if INNER.set(inner).is_err() {
        return Err("the page cache was wrapped already".into());
    }
    let ours = ffi::sqlite3_pcache_methods2 {
        iVersion: 1,
        pArg: ptr::null_mut(),
        xInit: Some(init_),
        xShutdown: Some(shutdown_),
        xCreate: Some(create_),
        xCachesize: Some(cachesize_),
        xPagecount: Some(pagecount_),
        xFetch: Some(fetch_),
        xUnpin: Some(unpin_),
        xRekey: Some(rekey_),
        xTruncate: Some(truncate_),
        xDestroy: Some(destroy_),
        xShrink: Some(shrink_),
    };
    // SAFETY: SQLITE_CONFIG_PCACHE2 takes one pointer to a methods struct and copies it; every
    // method of `ours` forwards to pcache1's with the cache pcache1 created.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PCACHE2,
            &ours as *const ffi::sqlite3_pcache_methods2,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(format!(
            "SQLite refused the page cache (sqlite3_config returned {rc})"
        ));
    }
    Ok(())
}

/// pcache1. Set before the wrapper's methods are installed, so every call of them finds it.
fn inner() -> Option<&'static Inner> {
    INNER.get()
}

/// # Safety
/// `p` is a cache [`create_`] returned and [`destroy_`] has not freed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    // SAFETY: by the caller's promise, `p` is a live `Box<Cache>` made by `create_`.
    unsafe { &*(p as *const Cache) }
}

// The wrapper's methods: each forwards to pcache1's with pcache1's cache (SQLite passes a cache
// `create_` made) and SQLite's own arguments; `fetch_`, `rekey_` and `truncate_` keep the bound.

unsafe extern "C" fn init_(_arg: *mut c_void) -> c_int {
    match inner() {
        // SAFETY: pcache1's init with pcache1's argument, as SQLite would call it.
        Some(m) => unsafe { (m.init)(m.arg) },
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn shutdown_(_arg: *mut c_void) {
    if let Some(m) = inner() {
        // SAFETY: as in `init_`.
        unsafe { (m.shutdown)(m.arg) }
    }
}

unsafe extern "C" fn create_(
    sz_page: c_int,
    sz_extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(m) = inner() else {
        return ptr::null_mut();
    };
    // SAFETY: forwarded with SQLite's own arguments.
    let inner = unsafe { (m.create)(sz_page, sz_extra, purgeable) };
    if inner.is_null() {
        return ptr::null_mut();
    }
    let lock_page = c_uint::try_from(sz_page)
        .ok()
        .filter(|s| *s > 0)
        .map_or(c_uint::MAX, |s| PENDING_BYTE / s + 1);
    Box::into_raw(Box::new(Cache {
        inner,
        lock_page,
        bound: AtomicU32::new(0),
        parked: AtomicU32::new(0),
    }))
    .cast()
}

unsafe extern "C" fn cachesize_(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(m) = inner() {
        // SAFETY: see above.
        unsafe { (m.cachesize)(cache(p).inner, n) }
    }
}

unsafe extern "C" fn pagecount_(p: *mut ffi::sqlite3_pcache) -> c_int {
    match inner() {
        // SAFETY: see above.
        Some(m) => unsafe { (m.pagecount)(cache(p).inner) },
        None => 0,
    }
}

unsafe extern "C" fn fetch_(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create_flag: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let Some(m) = inner() else {
        return ptr::null_mut();
    };
    // SAFETY: see above.
    let c = unsafe { cache(p) };
    // SAFETY: see above.
    let page = unsafe { (m.fetch)(c.inner, key, create_flag) };
    if !page.is_null() && create_flag != 0 {
        // The page may be new: from now on the cache may hold `key`.
        c.bound.fetch_max(key, Relaxed);
    }
    page
}

unsafe extern "C" fn unpin_(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(m) = inner() {
        // SAFETY: see above; the page is pcache1's, untouched by the wrapper.
        unsafe { (m.unpin)(cache(p).inner, page, discard) }
    }
}

unsafe extern "C" fn rekey_(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let Some(m) = inner() else {
        return;
    };
    // SAFETY: see above.
    let c = unsafe { cache(p) };
    // SAFETY: see above.
    unsafe { (m.rekey)(c.inner, page, old, new) };
    if new == c.lock_page {
        c.parked.fetch_add(1, Relaxed);
    } else {
        c.bound.fetch_max(new, Relaxed);
    }
    if old == c.lock_page {
        let _ = c
            .parked
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

unsafe extern "C" fn truncate_(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let Some(m) = inner() else {
        return;
    };
    // SAFETY: see above.
    let c = unsafe { cache(p) };
    if c.parked.load(Relaxed) == 0 && c.bound.load(Relaxed) < limit {
        // Every page's number is below `limit`: pcache1 would drop nothing.
        SKIPPED.fetch_add(1, Relaxed);
        return;
    }
    // SAFETY: see above.
    unsafe { (m.truncate)(c.inner, limit) };
    // pcache1 dropped every page numbered `limit` or more, parked ones included if that is them.
    c.bound.fetch_min(limit.saturating_sub(1), Relaxed);
    if limit <= c.lock_page {
        c.parked.store(0, Relaxed);
    }
}

unsafe extern "C" fn destroy_(p: *mut ffi::sqlite3_pcache) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` came from `Box::into_raw` in `create_`, and SQLite destroys a cache once.
    let c = unsafe { Box::from_raw(p as *mut Cache) };
    if let Some(m) = inner() {
        // SAFETY: pcache1's cache, destroyed once, as SQLite asked.
        unsafe { (m.destroy)(c.inner) }
    }
}

unsafe extern "C" fn shrink_(p: *mut ffi::sqlite3_pcache) {
    if let Some(m) = inner() {
        // SAFETY: see above.
        unsafe { (m.shrink)(cache(p).inner) }
    }
}
