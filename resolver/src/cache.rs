//! The answers of the tiers, cached and merged.
//!
//! A positive answer is kept for its TTL, "no such name" for [`NEGATIVE_TTL`]; an answer that a
//! tier could not give now (`Unavailable`) or must not be used (`Refused`) is never kept. Identical lookups in flight wait for
//! one lookup. Both maps are bounded: the cache drops expired answers, then the ones closest to
//! expiry; past [`MAX_IN_FLIGHT`] distinct names being looked up, a new one is refused for now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::name::Name;
use crate::tier::{Resolution, ResolveError};

/// How long "no such name" is believed.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Answers kept at most.
pub const MAX_CACHED: usize = 4096;
/// Distinct names looked up at once at most.
pub const MAX_IN_FLIGHT: usize = 1024;

type Answer = Result<Resolution, ResolveError>;

#[derive(Debug, Default)]
struct State {
    answers: HashMap<Name, (Answer, Instant)>,
    in_flight: HashMap<Name, Arc<OnceCell<Answer>>>,
    /// Bumped by [`Cache::clear`]: a lookup that began before is not cached after.
    generation: u64,
}

/// Removes a lookup from `in_flight` when its last waiter is gone, even if it was cancelled.
struct InFlight<'a> {
    cache: &'a Cache,
    name: &'a Name,
    cell: Arc<OnceCell<Answer>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.state();
        // Two references: the map's and ours. Others still waiting keep it in flight.
        let last = Arc::strong_count(&self.cell) <= 2;
        if last && state.in_flight.get(self.name).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            state.in_flight.remove(self.name);
        }
    }
}

/// The cache shared by every clone of one [`crate::Tiers`].
#[derive(Debug, Default)]
pub struct Cache {
    state: Mutex<State>,
}

impl Cache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget every answer (the names changed).
    pub fn clear(&self) {
        let mut state = self.state();
        state.answers.clear();
        state.generation += 1;
    }

    /// The cached answer for `name`, or the one `lookup` gives (merged with identical lookups
    /// in flight), cached for its TTL.
    pub async fn get_or_lookup<F>(&self, name: &Name, lookup: F) -> Answer
    where
        F: std::future::Future<Output = Answer>,
    {
        let (cell, generation) = {
            let mut state = self.state();
            let now = Instant::now();
            match state.answers.get(name) {
                Some((answer, expires)) if *expires > now => return answer.clone(),
                Some(_) => {
                    state.answers.remove(name);
                }
                None => {}
            }
            if !state.in_flight.contains_key(name) && state.in_flight.len() >= MAX_IN_FLIGHT {
                return Err(ResolveError::Unavailable {
                    name: name.to_string(),
                    reason: "too many names being looked up at once".into(),
                });
            }
            (state.in_flight.entry(name.clone()).or_default().clone(), state.generation)
        };
        let guard = InFlight { cache: self, name, cell };
        let answer = guard.cell.get_or_init(|| lookup).await.clone();
        let mut state = self.state();
        let cell = &guard.cell;
        if state.in_flight.get(name).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            state.in_flight.remove(name);
            if state.generation != generation {
                return answer;
            }
            let ttl = match &answer {
                Ok(resolution) => Some(resolution.ttl),
                Err(ResolveError::NoSuchName(_)) => Some(NEGATIVE_TTL),
                Err(ResolveError::Unavailable { .. } | ResolveError::Refused { .. }) => None,
            };
            if let Some(ttl) = ttl.filter(|ttl| !ttl.is_zero()) {
                make_room(&mut state.answers);
                state.answers.insert(name.clone(), (answer.clone(), Instant::now() + ttl));
            }
        }
        answer
    }
}

fn make_room(answers: &mut HashMap<Name, (Answer, Instant)>) {
    if answers.len() < MAX_CACHED {
        return;
    }
    let now = Instant::now();
    answers.retain(|_, (_, expires)| *expires > now);
    while answers.len() >= MAX_CACHED {
        let soonest =
            answers.iter().min_by_key(|(_, (_, expires))| *expires).map(|(n, _)| n.clone());
        match soonest {
            Some(name) => answers.remove(&name),
            None => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::name::Label;
    use crate::tier::{LOCAL_TTL, Resolve, Tier, TierAnswer, Tiers};

    /// A tier that counts its lookups, answers `box.lab` after a pause, and knows nothing else.
    #[derive(Debug, Default)]
    struct Counting {
        lookups: AtomicUsize,
        peer: Option<libp2p_identity::PeerId>,
    }

    impl Resolve for Counting {
        fn resolve<'a>(&'a self, host: &'a Label, _: &'a Label) -> TierAnswer<'a> {
            Box::pin(async move {
                self.lookups.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok((host.as_str() == "box").then(|| Resolution {
                    peer: self.peer.unwrap_or_else(libp2p_identity::PeerId::random),
                    addrs: Vec::new(),
                    tier: Tier::Local,
                    ttl: LOCAL_TTL,
                }))
            })
        }
    }

    fn name(text: &str) -> Name {
        Name::parse(text, &"p2p".parse().unwrap()).unwrap().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_of_one_name_cost_one_and_answers_are_kept_for_their_ttl() {
        let tier = Arc::new(Counting {
            peer: Some(libp2p_identity::PeerId::random()),
            ..Default::default()
        });
        let tiers = Tiers::new(vec![tier.clone() as Arc<dyn Resolve>]);
        let asks = (0..100).map(|_| {
            let tiers = tiers.clone();
            tokio::spawn(async move { tiers.resolve(&name("box.lab.p2p")).await })
        });
        let answers = futures_join(asks).await;
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|r| Some(r.peer) == tier.peer)));
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 1, "100 concurrent asks, one lookup");
        tokio::time::advance(LOCAL_TTL - Duration::from_secs(1)).await;
        tiers.resolve(&name("box.lab.p2p")).await.unwrap();
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 1, "cached within the TTL");
        tokio::time::advance(Duration::from_secs(2)).await;
        tiers.resolve(&name("box.lab.p2p")).await.unwrap();
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 2, "looked up again after it");
    }

    #[tokio::test(start_paused = true)]
    async fn no_such_name_is_cached_for_the_negative_ttl_and_a_clear_forgets_it() {
        let tier = Arc::new(Counting::default());
        let tiers = Tiers::new(vec![tier.clone() as Arc<dyn Resolve>]);
        let nas = name("nas.lab.p2p");
        assert!(matches!(tiers.resolve(&nas).await, Err(ResolveError::NoSuchName(_))));
        assert!(tiers.resolve(&nas).await.is_err());
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 1, "the negative answer is cached");
        tokio::time::advance(NEGATIVE_TTL + Duration::from_millis(1)).await;
        assert!(tiers.resolve(&nas).await.is_err());
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 2, "and expires");
        tiers.invalidate();
        assert!(tiers.resolve(&nas).await.is_err());
        assert_eq!(tier.lookups.load(Ordering::SeqCst), 3, "a reload forgets it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_whose_callers_all_left_is_no_longer_in_flight_and_a_clear_wins() {
        let cache = Arc::new(Cache::default());
        let box_name = name("box.lab.p2p");
        let waiting = {
            let (cache, box_name) = (cache.clone(), box_name.clone());
            tokio::spawn(
                async move { cache.get_or_lookup(&box_name, std::future::pending()).await },
            )
        };
        tokio::task::yield_now().await;
        assert_eq!(cache.state().in_flight.len(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert!(cache.state().in_flight.is_empty(), "a cancelled lookup leaves nothing behind");

        // A lookup that began before a clear (a reload) is answered but not cached.
        let (old, reload) = (cache.clone(), cache.clone());
        let slow = async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(ResolveError::NoSuchName("box.lab".into()))
        };
        let lookup =
            tokio::spawn(async move { old.get_or_lookup(&name("box.lab.p2p"), slow).await });
        tokio::task::yield_now().await;
        reload.clear();
        assert!(lookup.await.unwrap().is_err());
        assert!(cache.state().answers.is_empty(), "the old answer was not kept");
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut answers = HashMap::new();
        let now = Instant::now();
        for i in 0..MAX_CACHED {
            let answer = Err(ResolveError::NoSuchName(String::new()));
            let expires = now + Duration::from_secs(1 + i as u64);
            answers.insert(name(&format!("h{i}.lab.p2p")), (answer, expires));
        }
        make_room(&mut answers);
        assert_eq!(answers.len(), MAX_CACHED - 1, "room for one more");
        assert!(!answers.contains_key(&name("h0.lab.p2p")), "the soonest to expire went");
    }

    async fn futures_join<T: Send + 'static>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }
}
