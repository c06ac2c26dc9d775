package jsonstream

import (
	"encoding/binary"
	"errors"
	"io"
	"time"

	"github.com/lib/pq"
)

// An early Close of a portal stream may send the messages that end the
// portal and return without waiting for their replies: the end is owed.
// The server reads them before anything sent later and answers them
// first, so whoever reads the connection next reads the owed replies
// first (settle): lib/pq, in the first read of its next statement
// (sock.Read), or the next portal stream, once its query is sent
// (portal.read). The round trip of the end then overlaps the next
// statement's instead of adding to it.
//
// An end is owed only where its replies cannot change anything a caller
// sees, with nothing in flight, nothing the server sent waiting unread
// (quiet: a FATAL, which Close then reports) and no notice handler to
// hear of them late (nor a notification handler: outside a transaction,
// not on a session that ran LISTEN):
//
//   - Inside a transaction block (mayOwe) the end is Close and Sync, and
//     the transaction status it leaves is the one it found. A pooler keeps
//     the server inside a transaction block. The close of the portal fails
//     only for a statement_timeout that expired while the server waited
//     for the next Execute, which aborts the transaction: only a stream
//     younger than owedEndMaxAge owes its end, and the statement that
//     reads such an end fails with its error (payOwed), on a connection
//     then discarded, so that no COMMIT after it seems to succeed.
//   - Outside a transaction (mayOweUnsynced), on a connection whose inner
//     conn the caller never took (Unwrap: lib/pq does not tell of a
//     notification handler set there), the early close of a read rolls
//     back its implicit transaction with BEGIN and ROLLBACK, and the end
//     goes without its Sync. A Sync would end the implicit transaction
//     with a ReadyForQuery at which a transaction pooler may hand the
//     server to another client, with the next statement already sent
//     behind it. Without one, the next statement follows the ROLLBACK on
//     the same server as if the end had been waited for, and its own
//     ReadyForQuery is the first the pooler sees. If nothing follows
//     within owedSyncDelay, the connection sends the Sync from a goroutine
//     of its own and reads its reply (syncOwed), so that a connection
//     resting in the pool is idle for the server and its pooler, and
//     whoever takes it next waits for that (claim).
//
// A statement_timeout that expired while the server waited for the
// client is raised at the first message the server reads next, the end's
// BEGIN; the server then skips what follows up to a Sync, the next
// statement included. The reader of the owed end finds the error, sends
// the Sync and sends again what was written since the end (recover). The
// error is the closed stream's, whose rollback is what the end asked
// for, and its Close has returned: it is dropped. Only a stream younger
// than owedEndMaxAge goes without its Sync, so that only a
// statement_timeout shorter than that can be dropped; an older stream's
// Close reads its end and reports such an error. Close also reads its end
// when the server sent anything it has not read (quiet): a FATAL, a
// notice.

// owedSyncDelay is how long an owed end may go without its Sync when
// nothing is written after it. A variable for the tests.
var owedSyncDelay = 2 * time.Millisecond

// owedEndMaxAge is the age past which a stream's early close waits for
// its end (above). A variable for the tests.
var owedEndMaxAge = 100 * time.Millisecond

// owedEndStatements is how many statements an end without Sync runs (BEGIN
// and ROLLBACK): its owed replies end with their CommandCompletes.
const owedEndStatements = 2

// mayOwe reports whether the end about to be sent inside a transaction
// block may be owed (see above). A stream's age counts from its query's
// start (conn.queryStart), at or before its first message, where the
// server's statement_timeout starts, and before any round trip that
// described the statement: never younger than the server counts it.
func (p *portal) mayOwe() bool {
	return p.before == txStatusInTx && p.owable() && p.r.start.elapsed() < owedEndMaxAge &&
		p.conn.sock.quiet()
}

// mayOweUnsynced reports whether the end of an early-closed read outside
// a transaction may go without its Sync (see above).
func (p *portal) mayOweUnsynced() bool {
	return p.before == txStatusIdle && p.owable() && !p.conn.sock.frames.listening.Load() &&
		!p.conn.unwrapped && p.r.start.elapsed() < owedEndMaxAge && !p.w.holds() && p.conn.sock.quiet()
}

// owable reports what every owed end needs: nothing in flight, no end
// owed already, and no notice handler to hear of the replies late.
func (p *portal) owable() bool {
	return p.outstanding == 0 && p.conn.sock.owed == nil && pq.NoticeHandler(p.conn.inner) == nil
}

// quiet reports whether nothing the server sent waits to be read, so that
// Close reads and reports it if something does (a FATAL). The socket
// beneath is looked at without reading it; through TLS, a read that does
// not wait (its deadline passed: the socket is not read) looks at what
// the TLS connection holds of what it read before, and what it reads is
// kept for the next read.
func (s *sock) quiet() bool {
	if s.heldOff < len(s.held) || !s.rawQuiet() {
		return false
	}
	if !s.encrypted() {
		return true
	}
	if s.SetReadDeadline(time.Unix(1, 0)) != nil {
		return false
	}
	n, err := s.Conn.Read(s.peekBuf[:])
	// A drain's deadline, if one was set, is set again from its bound by
	// the drain's next read.
	s.armed.Store(false)
	if s.SetReadDeadline(time.Time{}) != nil {
		s.armed.Store(true) // the end's drain clears it again, or cuts
		return false
	}
	if n > 0 || err != nil && !isTimeout(err) {
		s.held = append(s.held[:0], s.peekBuf[:n]...)
		s.heldOff, s.heldScanned = 0, 0
		if err != nil && !isTimeout(err) {
			s.heldErr = err
		}
		return false
	}
	return true
}

// owe leaves the end just sent to be read by whoever reads next.
func (p *portal) owe() error {
	c := p.conn
	p.owed = true
	p.whole = false
	c.portalOpen.Store(false)
	if !c.sock.endDrain() {
		return p.cutEnd()
	}
	c.sock.owed = p
	c.sock.owedWrites = c.sock.frames.writes.Load()
	// The ReadyForQuery messages still to come: those in the wire's
	// buffer went past the framer already.
	c.sock.frames.owedZ.Add(int32(p.pendingZ - p.w.bufferedReady()))
	return nil
}

// oweUnsynced owes the end just sent without its Sync, and has the Sync
// sent in owedSyncDelay unless something is written first.
func (p *portal) oweUnsynced() error {
	if err := p.owe(); err != nil || p.ended {
		return err
	}
	p.unsynced = true
	p.endLeft = owedEndStatements
	s := p.conn.sock
	s.replay = s.replay[:0]
	s.syncPending.Store(true)
	if s.syncTimer == nil {
		s.syncTimer = time.AfterFunc(owedSyncDelay, s.syncOwed)
	} else {
		s.syncTimer.Reset(owedSyncDelay)
	}
	return nil
}

// settle reads an owed end's replies up to its ReadyForQuery, or for an
// end without Sync up to its last CommandComplete, handing back to lib/pq
// what it reads for lib/pq (handBack). A connection that fails meanwhile
// is discarded: a FATAL before the end was carried out sets endedFirst,
// a failed read keeps its error in lostErr, for payOwed.
func (p *portal) settle() {
	for !p.ended {
		typ, body, err := p.w.next()
		if err != nil {
			if p.owed {
				p.lostErr = err
			}
			_ = p.lost(err)
			return
		}
		if typ == 'E' && p.owed && endsSession(body) != nil {
			// The server ends the session before the end's last reply:
			// it read nothing sent after the end.
			p.endedFirst = true
		}
		if p.unsynced {
			switch typ {
			case 'C':
				if p.endLeft--; p.endLeft == 0 {
					p.endUnsynced()
					return
				}
				continue
			case 'E':
				if endsSession(body) == nil {
					p.recover()
					continue
				}
			}
		}
		if err := p.skip(typ, body); err != nil {
			return
		}
	}
}

// endUnsynced ends an owed end without Sync at its last CommandComplete:
// the connection is lib/pq's again, outside a transaction as before.
func (p *portal) endUnsynced() {
	p.unsynced = false
	p.ended = true
	p.conn.sock.dropReplay()
	p.handBack(p.before)
}

// dropReplay empties replay, letting go of a large one.
func (s *sock) dropReplay() {
	if cap(s.replay) > maxKeptReplay {
		s.replay = nil
	}
	s.replay = s.replay[:0]
}

// maxKeptReplay is the capacity of replay a connection keeps for the next
// end without Sync.
const maxKeptReplay = 64 << 10

// errUnrecoverable is the error of an end without Sync that failed when
// what was written after it cannot be sent again as it was.
var errUnrecoverable = errors.New("jsonstream: the end of an early-closed stream failed after the next statement was sent")

// recover handles an error before the last statement of an end without
// Sync (a statement_timeout that expired while the server waited for the
// client): the server skips everything up to a Sync, the end's ROLLBACK
// and what was written after it. The implicit transaction ends at the
// Sync, rolled back as the end meant it to be, and what was written is
// sent again once its ReadyForQuery is read (settle). The error is the
// closed stream's, which its Close already returned from: it is dropped.
func (p *portal) recover() {
	s := p.conn.sock
	p.unsynced = false
	p.finished = true
	p.pendingZ = 1
	switch syncs, last := clientSyncs(s.replay); {
	case syncs == 0:
		// Nothing written holds a Sync: one is sent, and its
		// ReadyForQuery answers none of lib/pq's writes.
		s.frames.owedZ.Add(1)
		if _, err := s.Conn.Write([]byte{'S', 0, 0, 0, 4}); err != nil {
			// Nothing written ran: the server skipped it.
			p.endedFirst = true
			_ = p.lost(err)
			return
		}
	case syncs == 1 && last:
		// The write ends with a Sync, which ends the skipping: its
		// ReadyForQuery answers nothing that was run, and lib/pq's reply
		// is still to come. The framer may have met it already, in the
		// read that brought the error.
		if p.w.bufferedReady() > 0 {
			s.frames.readyAt.Store(0)
		} else {
			s.frames.owedZ.Add(1)
		}
	default:
		// More than the statement written after the end reached the
		// server, and what follows its first Sync ran: no part of it can
		// be sent again. Nothing lib/pq writes holds two Syncs before it
		// reads; the connection fails rather than guess.
		p.unrecoverable = true
		_ = p.lost(errUnrecoverable)
		return
	}
	p.resend = true
}

// clientSyncs counts the Sync messages among the client messages in b, and
// reports whether the last message is one.
func clientSyncs(b []byte) (n int, last bool) {
	for len(b) >= 5 {
		size := int(binary.BigEndian.Uint32(b[1:]))
		if size < 4 || size+1 > len(b) {
			return n, false
		}
		last = b[0] == 'S'
		if last {
			n++
		}
		b = b[1+size:]
	}
	return n, last
}

// payOwed reads the owed end, if there is one (settle), and sends again
// what an end that failed made the server skip (recover). It returns
// io.EOF when the session ended before the end was carried out: nothing
// written after it ran, and lib/pq reports io.EOF as driver.ErrBadConn,
// so that database/sql runs the statement on another connection (in a
// transaction, the statement fails with it). It returns the read's error
// when the connection was lost while the end was read: what was written
// after it may have run, and lib/pq reports a network error as it is. It returns errUnrecoverable when what was written after
// the end could not be sent again (recover), and the server's error when
// the end inside a transaction block failed (mayOwe): the transaction is
// aborted. The connection is then discarded.
func (s *sock) payOwed() error {
	p := s.owed
	if p == nil {
		return nil
	}
	s.owed = nil
	p.settle()
	if p.resend {
		p.resend = false
		if !p.conn.isCut() && len(s.replay) > 0 {
			if _, err := s.Conn.Write(s.replay); err != nil {
				p.conn.discard()
			}
		}
	}
	s.dropReplay()
	switch {
	case p.unrecoverable:
		return errUnrecoverable
	case p.endedFirst:
		return io.EOF
	case p.lostErr != nil:
		// lib/pq gets the read's own error, as it would have read it.
		err := p.lostErr
		p.lostErr = nil
		return err
	}
	if err := p.takeServerErr(); err != nil {
		p.conn.discard()
		return err
	}
	return nil
}

// owes reports whether an end is owed, waiting for its Sync timer if it is
// running: a check that does not claim the connection.
func (s *sock) owes() bool {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	return s.owed != nil
}

// idleButOwed reports whether the connection is idle but for an owed end:
// nothing was written since.
func (s *sock) idleButOwed() bool {
	return s.owed != nil && s.frames.writes.Load() == s.owedWrites
}

// claim takes the connection from an owed end's Sync timer for the
// goroutine that uses the connection: it stops the timer, or waits for
// the Sync it is sending to be answered. Whoever uses the connection
// calls it first (usable, Close, and the socket's reads and writes for
// lib/pq).
func (s *sock) claim() {
	if s == nil || !s.syncPending.Load() {
		return
	}
	s.syncMu.Lock()
	if s.syncPending.Load() {
		s.syncTimer.Stop()
		s.syncPending.Store(false)
	}
	s.syncMu.Unlock()
}

// rearm starts the Sync timer again for an owed end without Sync whose
// timer a claim stopped, when nothing was written since: the call that
// claimed the connection failed before it sent anything.
func (s *sock) rearm() {
	if s == nil {
		return
	}
	if o := s.owed; o != nil && o.unsynced && !s.syncPending.Load() && s.frames.writes.Load() == s.owedWrites {
		s.syncPending.Store(true)
		s.syncTimer.Reset(owedSyncDelay)
	}
}

// syncOwed is the Sync timer's: it sends the Sync of an owed end that
// nothing followed (syncEnd).
func (s *sock) syncOwed() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if !s.syncPending.Load() {
		return
	}
	defer s.syncPending.Store(false)
	s.syncEnd()
}

// settleNow ends an owed end without Sync that nothing followed, in the
// caller's goroutine, before the connection goes where jsonstream cannot
// claim it (Unwrap).
func (s *sock) settleNow() {
	if s == nil {
		return
	}
	s.claim()
	if s.frames.writes.Load() == s.owedWrites {
		s.syncEnd()
	}
}

// syncEnd sends the Sync of an owed end without Sync, and reads the
// replies up to its ReadyForQuery within the stream's end bound: the
// connection is then idle, for lib/pq and for the server. A connection
// that fails meanwhile is discarded. The timer's goroutine runs it with
// syncMu held, or the connection's own once claimed.
func (s *sock) syncEnd() {
	p := s.owed
	if p == nil || !p.unsynced {
		return
	}
	p.wireMu.Lock()
	defer p.wireMu.Unlock()
	s.owed = nil
	p.unsynced = false
	p.pendingZ = 1
	s.dropReplay()
	p.w.sync()
	if err := p.w.send(); err != nil {
		_ = p.lost(err)
		return
	}
	if !s.beginDrain(time.Now().Add(max(cursorEndTimeout, p.r.settings.drainTimeout))) {
		_ = p.lost(errUnrecoverable)
		return
	}
	p.settle()
	if !s.endDrain() {
		p.conn.discard()
	}
}
