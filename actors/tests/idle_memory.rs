//! Measures what an idle registry child costs, registry bookkeeping included.
//!
//! Its own test binary because it installs a counting global allocator.
//! Run with `--nocapture` to see the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use actorbot_actors::registry::{KeyedRegistry, Persist, RegistryConfig, Retire};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged and only
// counts the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A minimal per-key child: a key and a counter of handled messages.
struct Chat {
    handled: Arc<AtomicUsize>,
    _key: u64,
}

impl Actor for Chat {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Hello;

impl Handler<Hello> for Chat {
    type Result = ();
    fn handle(&mut self, _: Hello, _: &mut Context<Self>) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }
}

impl Supervised for Chat {}

impl Handler<Retire> for Chat {
    type Result = Persist;
    fn handle(&mut self, _: Retire, _: &mut Context<Self>) -> Persist {
        Persist::nothing()
    }
}

const CHILDREN: usize = 20_000;

#[actix_rt::test]
async fn idle_child_costs_at_most_two_kilobytes() {
    let handled = Arc::new(AtomicUsize::new(0));
    let arbiters = [Arbiter::new(), Arbiter::new()];
    let config = RegistryConfig::new(Duration::from_secs(3600), CHILDREN * 2);
    let registry = KeyedRegistry::new(config, arbiters.iter().map(|a| a.handle()).collect(), {
        let handled = Arc::clone(&handled);
        move |key: &u64| Chat {
            handled: Arc::clone(&handled),
            _key: *key,
        }
    });
    // Let the sweep task and the arbiters settle before the baseline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = LIVE_BYTES.load(Ordering::Relaxed);

    for key in 0..CHILDREN as u64 {
        registry.route(key, Hello).await.expect("routed");
    }
    // Wait until every child has handled its message and every slot is back.
    while handled.load(Ordering::Relaxed) < CHILDREN || registry.stats().queued > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = LIVE_BYTES.load(Ordering::Relaxed);

    let per_child = (after - before) / CHILDREN as isize;
    println!(
        "{CHILDREN} idle children: {} bytes live, {per_child} bytes per idle child",
        after - before
    );
    assert_eq!(registry.stats().live, CHILDREN);
    assert!(per_child <= 2048, "{per_child} bytes per idle child");

    registry.shutdown().await;
    for arbiter in arbiters {
        arbiter.stop();
    }
}
