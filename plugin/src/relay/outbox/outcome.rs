//! What the answer to a post tells, and what follows: stored (its messages leave the queue, its number
//! is used), refused (too large: one message per post; out of budget: wait for the block that allows
//! it; otherwise back off) or of unknown outcome (settled by our own last number before the number is
//! used again).

use super::*;

impl Outbox {
    pub(super) fn verified(&mut self, p: InFlight, verified: Verified, now: Instant) {
        match verified {
            Verified::Stored => {
                self.stored_after_all(&p, now);
                self.next_request(now);
            }
            Verified::Unknown => {
                self.pending = Some(p);
                self.back_off(now);
            }
            // Only the same text may go under its number: a late first copy then changes nothing.
            Verified::NotYet => {
                self.log(Level::Info, format!("post {} (outcome unknown) is not stored yet: sending it again, the same text under the same number", p.k));
                self.send(p, true);
            }
        }
    }

    pub(super) fn stored_after_all(&mut self, p: &InFlight, now: Instant) {
        self.log(
            Level::Info,
            format!(
                "post {} (outcome unknown) was stored by twisterd: its {} messages are done",
                p.k, p.items
            ),
        );
        self.posted(p, now);
    }

    pub(super) fn sent(&mut self, flight: InFlight, resend: bool, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Stored => {
                self.posted(&flight, now);
                self.next_request(now);
            }
            Outcome::Unknown(e) => {
                self.counters.unknown_outcomes += 1;
                if !resend {
                    let k = flight.k;
                    self.log(Level::Warning, format!("no answer to post {k} ({}): it may have been stored; finding out before number {k} is used again (unknown outcomes so far: {})", e.kind(), self.counters.unknown_outcomes));
                }
                self.pending = Some(flight);
                self.back_off(now);
            }
            Outcome::Refused(e) => {
                let refusal = e.refusal().unwrap_or(Refusal::Other);
                if refusal == Refusal::TooLarge && !resend {
                    self.log(Level::Error, format!("twisterd found a post of {} bytes too large: sending one message per post", flight.text.len()));
                    if flight.items == 1 {
                        for item in self.pop(&flight.to, 1, now) {
                            self.let_go_record(item.id);
                        }
                        self.effects.push_back(Effect::Dropped(
                            Reason::TooBig,
                            "twisterd refused a post of one message as too large".to_string(),
                        ));
                        return self.next_request(now);
                    }
                    return self.back_off(now);
                }
                let k = flight.k;
                // A post of unknown outcome stays as it is: its first copy may still land.
                if resend {
                    self.pending = Some(flight);
                }
                if refusal.waits_for_a_block() {
                    self.burst = 0;
                    let id = self.request(Awaiting::RefusedAt {
                        k,
                        refusal,
                        error: e,
                    });
                    self.effects.push_back(Effect::Height { id });
                } else {
                    if let TwisterError::Refused { .. } = e {
                        self.log(Level::Error, format!("posting failed: {e}"));
                    }
                    self.back_off(now);
                }
            }
        }
    }

    /// twisterd refused post `k` until a later block: wait for the chain to reach the height that can
    /// allow it (`watch_height`).
    pub(super) fn out_of_budget(
        &mut self,
        k: i64,
        refusal: Refusal,
        e: &TwisterError,
        height: i64,
    ) {
        let wait = match refusal {
            Refusal::BadSignature => self.budget.too_recent(height),
            _ => self.budget.refused(k, height),
        };
        self.counters.budget_waits += 1;
        let level = if self.counters.budget_waits == 1 {
            Level::Notice
        } else {
            Level::Info
        };
        self.log(level, format!("out of post budget: twisterd refused post {k} at height {height} ({e}); queueing and watching the chain height, posting at height {wait}"));
    }

    /// `p` is stored: its items leave the queue and its number is used.
    pub(super) fn posted(&mut self, p: &InFlight, now: Instant) {
        self.next_k = self.next_k.max(p.k + 1);
        self.seq += 1;
        // Saved soon; a crash in between is covered at start-up, where the next k is also taken from
        // twisterd's own last piece (getlasthave).
        self.effects.push_back(Effect::StateChanged);
        match p.to {
            None => self.counters.posts += 1,
            Some(_) => self.counters.dms += 1,
        }
        self.counters.messages_posted += p.items as u64;
        let items = self.pop(&p.to, p.items, now);
        // For receipts: their clocks start now (`crate::relay::receipts::tracker`).
        self.posted_ids.extend(items.iter().filter_map(|i| i.id));
        let copies = items
            .into_iter()
            .map(|item| (self.record(item.id), item))
            .collect();
        // Held until twisterd confirms it and a while longer: posted again if it forgets it.
        self.ledger.stored(p.k, p.to.clone(), copies);
        self.backoff = FIRST_BACKOFF;
    }

    pub(super) fn back_off(&mut self, now: Instant) {
        self.burst = 0;
        self.timers.set(Timer::PostRetry, now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
