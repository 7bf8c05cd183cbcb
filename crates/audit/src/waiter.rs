//! How an appender waits for its record to be durable: a slot the writer fills and wakes,
//! taken from a pool and given back once read. A channel per append (tokio's oneshot) was
//! an allocation per record, two per transaction, freed on another thread than it was made
//! on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{AuditError, Result};

/// Slots the pool keeps at most (a queue's worth of waiting appenders).
const POOLED_SLOTS: usize = 4096;

#[derive(Default)]
struct Slot(Mutex<State>);

#[derive(Default)]
enum State {
    /// Not answered yet; the waiter's task, once it has polled.
    #[default]
    Waiting,
    Parked(Waker),
    Answered(Result<u64>),
    /// Read by the waiter.
    Taken,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's end: answered once; dropped unanswered (the writer stopped), it answers
/// [`AuditError::Closed`], as a dropped channel did.
pub(crate) struct Ack(Option<Arc<Slot>>);

impl Ack {
    pub(crate) fn send(mut self, result: Result<u64>) {
        if let Some(slot) = self.0.take() {
            answer(&slot, result);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            answer(&slot, Err(AuditError::Closed));
        }
    }
}

fn answer(slot: &Slot, result: Result<u64>) {
    let parked = std::mem::replace(&mut *slot.lock(), State::Answered(result));
    // Woken after the lock is released: the waiter takes the answer at once.
    if let State::Parked(waker) = parked {
        waker.wake();
    }
}

/// The appender's end: the answer, then the slot goes back to the pool.
pub(crate) struct Waiting {
    slot: Option<Arc<Slot>>,
    pool: Arc<WaiterPool>,
}

impl Future for Waiting {
    type Output = Result<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        let Some(slot) = self.slot.clone() else {
            return Poll::Ready(Err(AuditError::Closed));
        };
        let mut state = slot.lock();
        match std::mem::take(&mut *state) {
            State::Answered(result) => {
                *state = State::Taken;
                drop(state);
                if let Some(slot) = self.slot.take() {
                    self.pool.give(slot);
                }
                Poll::Ready(result)
            }
            State::Parked(waker) if waker.will_wake(cx.waker()) => {
                *state = State::Parked(waker);
                Poll::Pending
            }
            State::Waiting | State::Parked(_) => {
                *state = State::Parked(cx.waker().clone());
                Poll::Pending
            }
            State::Taken => Poll::Ready(Err(AuditError::Closed)),
        }
    }
}

/// Slots answered and read, for the next appends. A slot is given back only by its waiter,
/// after the answer: the writer's end has then filled it and touches it no more.
#[derive(Default)]
pub(crate) struct WaiterPool {
    free: Mutex<Vec<Arc<Slot>>>,
}

impl WaiterPool {
    /// A writer's end and the waiter's end of one answer.
    pub(crate) fn pair(self: &Arc<Self>) -> (Ack, Waiting) {
        let pooled = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let slot = pooled.unwrap_or_default();
        *slot.lock() = State::Waiting;
        (
            Ack(Some(slot.clone())),
            Waiting {
                slot: Some(slot),
                pool: self.clone(),
            },
        )
    }

    fn give(&self, slot: Arc<Slot>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOLED_SLOTS {
            free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_arrives_whether_sent_before_or_after_the_wait() {
        let pool = Arc::new(WaiterPool::default());
        let (ack, waiting) = pool.pair();
        ack.send(Ok(7));
        assert_eq!(waiting.await.unwrap(), 7);
        let (ack, waiting) = pool.pair();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            ack.send(Ok(8));
        });
        assert_eq!(waiting.await.unwrap(), 8);
        sender.join().unwrap();
        assert_eq!(
            pool.free.lock().unwrap().len(),
            1,
            "the slot went back, once"
        );
    }

    #[tokio::test]
    async fn a_writer_end_dropped_unanswered_answers_closed() {
        let pool = Arc::new(WaiterPool::default());
        let (ack, waiting) = pool.pair();
        drop(ack);
        assert!(matches!(waiting.await, Err(AuditError::Closed)));
        let (ack, waiting) = pool.pair();
        ack.send(Err(AuditError::Failed("disk".into())));
        assert!(matches!(waiting.await, Err(AuditError::Failed(_))));
    }

    #[tokio::test]
    async fn a_reused_slot_holds_nothing_of_its_last_answer() {
        let pool = Arc::new(WaiterPool::default());
        for i in 0..100u64 {
            let (ack, waiting) = pool.pair();
            let sent = tokio::task::spawn_blocking(move || ack.send(Ok(i)));
            assert_eq!(waiting.await.unwrap(), i);
            sent.await.unwrap();
        }
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
