package jsonstream

import "github.com/lib/pq"

// An early Close of a portal stream in the caller's transaction sends
// the messages that end the portal and returns without waiting for their
// replies: the end is owed. The server reads them before anything sent
// later and answers them first, so whoever reads the connection next
// reads the owed replies first (settle): lib/pq, in the first read of
// its next statement (sock.Read), or the next portal stream, once its
// query is sent (portal.read). The round trip of the end then overlaps
// the next statement's instead of adding to it.
//
// An end is owed only where its replies cannot change anything a caller
// sees (mayOwe): inside a transaction block, with nothing in flight, the
// close of the portal cannot fail, and the transaction status it leaves
// is the one it found. Outside a transaction the end is read before Close
// returns: its Sync ends the implicit transaction, and a transaction
// pooler may hand the server to another client at the ReadyForQuery that
// answers it, with the next statement already sent behind it. Inside a
// transaction block a pooler keeps the server.

// mayOwe reports whether the end about to be sent may be owed (see
// above).
func (p *portal) mayOwe() bool {
	c := p.conn
	return p.before == txStatusInTx && p.outstanding == 0 && c.sock.owed == nil &&
		pq.NoticeHandler(c.inner) == nil
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

// settle reads an owed end's replies up to its ReadyForQuery, handing
// back to lib/pq what it reads for lib/pq (handBack). A connection that
// fails meanwhile is discarded, and whoever reads next meets the failure.
func (p *portal) settle() {
	for !p.ended {
		typ, body, err := p.w.next()
		if err != nil {
			_ = p.lost(err)
			return
		}
		if err := p.skip(typ, body); err != nil {
			return
		}
	}
}

// payOwed reads the owed end, if there is one (settle).
func (s *sock) payOwed() {
	if p := s.owed; p != nil {
		s.owed = nil
		p.settle()
	}
}

// idleButOwed reports whether the connection is idle but for an owed end:
// nothing was written since.
func (s *sock) idleButOwed() bool {
	return s.owed != nil && s.frames.writes.Load() == s.owedWrites
}
