//! The connection table: every client connection the VMM accepted for a
//! guest, which queue pair owns it, and the receive and send pending on
//! it. A connection's id ([`ConnId`]) is its slot index (low 16 bits) and
//! the slot's generation (high 16 bits, never 0): a freed slot gets a new
//! generation, and freed slots are reused oldest first, only once the
//! table has grown to `max_connections` slots, so a stale id names no
//! other client's connection for a long time.

use super::guest::GuestSpan;
use dbos_abi::net::ConnId;
use std::collections::VecDeque;

/// Most slots (and so the largest `--max-connections`): ids have 16 bits
/// of slot index.
pub const MAX_SLOTS: usize = 1 << 16;

/// A receive or send waiting for its socket.
#[derive(Debug)]
pub struct PendingIo {
    pub cid: u16,
    /// The guest buffer.
    pub span: GuestSpan,
    /// Bytes done so far (sends hand their bytes over in pieces).
    pub done: usize,
}

/// One open connection.
pub struct Conn {
    pub stream: mio::net::TcpStream,
    /// The queue pair that accepted it (its slot).
    pub queue: usize,
    pub recv: Option<PendingIo>,
    pub send: Option<PendingIo>,
    /// The socket failed (reset by the client, or an error): every later
    /// receive or send completes with `Reset`.
    pub failed: bool,
}

struct Slot {
    generation: u16,
    conn: Option<Conn>,
}

/// The open connections of one VM, over all its queue pairs.
pub struct Table {
    slots: Vec<Slot>,
    /// Free slots, oldest freed first.
    free: VecDeque<usize>,
    open: usize,
    max: usize,
}

impl Table {
    /// A table of at most `max` (1..=[`MAX_SLOTS`]) open connections.
    pub fn new(max: usize) -> Table {
        Table {
            slots: Vec::new(),
            free: VecDeque::new(),
            open: 0,
            max: max.clamp(1, MAX_SLOTS),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Whether `max` connections are open.
    pub fn full(&self) -> bool {
        self.open >= self.max
    }

    /// The slot a new connection would get (`None` when full).
    pub fn next_slot(&self) -> Option<usize> {
        if self.full() {
            None
        } else if self.slots.len() < self.max {
            Some(self.slots.len())
        } else {
            self.free.front().copied()
        }
    }

    /// Adds a connection into [`Table::next_slot`]; returns its id.
    pub fn insert(&mut self, conn: Conn) -> Option<(usize, ConnId)> {
        let slot = self.next_slot()?;
        if slot == self.slots.len() {
            self.slots.push(Slot {
                generation: 1,
                conn: None,
            });
        } else {
            self.free.pop_front();
        }
        let s = &mut self.slots[slot];
        s.conn = Some(conn);
        self.open += 1;
        Some((slot, id(slot, s.generation)))
    }

    /// The slot of `id` if it names an open connection.
    pub fn slot_of(&self, id: ConnId) -> Option<usize> {
        let slot = (id.0 & 0xffff) as usize;
        let generation = (id.0 >> 16) as u16;
        let s = self.slots.get(slot)?;
        (s.generation == generation && s.conn.is_some()).then_some(slot)
    }

    /// The id of the connection in `slot` (of its next one if it is
    /// free; 0 for a slot that never was).
    pub fn id_of(&self, slot: usize) -> ConnId {
        self.slots
            .get(slot)
            .map_or(ConnId(0), |s| id(slot, s.generation))
    }

    pub fn get(&self, slot: usize) -> Option<&Conn> {
        self.slots.get(slot)?.conn.as_ref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot)?.conn.as_mut()
    }

    /// Removes the connection in `slot` (its id is dead from now on).
    pub fn remove(&mut self, slot: usize) -> Option<Conn> {
        let s = self.slots.get_mut(slot)?;
        let conn = s.conn.take()?;
        s.generation = s.generation.checked_add(1).unwrap_or(1);
        self.free.push_back(slot);
        self.open -= 1;
        Some(conn)
    }

    /// Slots of the connections `queue` owns.
    pub fn owned_by(&self, queue: usize) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.queue == queue)
            })
            .collect()
    }

    /// Slots of every open connection.
    pub fn all(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].conn.is_some())
            .collect()
    }
}

fn id(slot: usize, generation: u16) -> ConnId {
    ConnId(u32::from(generation) << 16 | slot as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(queue: usize) -> Conn {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        Conn {
            stream: mio::net::TcpStream::from_std(s),
            queue,
            recv: None,
            send: None,
            failed: false,
        }
    }

    #[test]
    fn ids_are_not_reused_soon() {
        let mut t = Table::new(2);
        let (s0, a) = t.insert(conn(0)).unwrap();
        let (s1, b) = t.insert(conn(1)).unwrap();
        assert_eq!((s0, s1), (0, 1));
        assert_eq!(a, ConnId(1 << 16));
        assert_eq!(b, ConnId(1 << 16 | 1));
        assert!(t.full());
        assert!(t.insert(conn(0)).is_none());
        assert_eq!(t.owned_by(1), vec![1]);
        t.remove(s0).unwrap();
        assert_eq!(t.slot_of(a), None, "a closed id is dead");
        let (s2, c) = t.insert(conn(0)).unwrap();
        assert_eq!(s2, 0);
        assert_eq!(c, ConnId(2 << 16));
        assert_eq!(t.slot_of(a), None, "a stale id names no new connection");
        assert_eq!(t.slot_of(c), Some(0));
        assert_eq!(t.slot_of(ConnId(0)), None);
        assert_eq!(t.slot_of(ConnId(u32::MAX)), None);
        assert_eq!(t.open(), 2);
        assert_eq!(t.all(), vec![0, 1]);
    }
}
