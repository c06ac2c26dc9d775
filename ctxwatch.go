package jsonstream

import (
	"context"
	"sync"
)

// A portal stream watches its query's context with one watch, from the
// query's first message to the end of its rows' Close. Its phases once
// took a watch each (the reply up to the first row, the open rows, an
// end that reads without a bound): a context.AfterFunc takes the
// context's lock to register and again to stop, and allocates, which a
// QueryRow with a request's context paid three times over. What the end
// of the context does depends on the phase the stream is in.

// watchPhase is the phase of a portal stream that its query's watch acts
// for.
type watchPhase uint8

const (
	// watchStart: the query went out and its reply is read up to the
	// first row (portal.start). An end of the context bounds that read
	// (portal.interrupt); Query then returns the context's error.
	watchStart watchPhase = iota
	// watchBinding: the reply up to the first row was read and the rows
	// are not open yet. An end of the context is noted for the rows.
	watchBinding
	// watchRows: the rows are open. An end of the context fails the
	// stream (rows.fail): a read of the consumer's is bounded, and the
	// portal ended.
	watchRows
	// watchClosing: the rows' Close ends the portal. An end of the
	// context bounds a read of that end's that has no bound of its own
	// (portal.watched).
	watchClosing
	// watchOff: the watch does nothing any more.
	watchOff
)

// queryWatch is a portal stream's watch of its query's context.
type queryWatch struct {
	p   *portal
	ctx context.Context
	// stop is the context.AfterFunc's; fire is its function.
	stop func() bool
	// mu guards phase and fired. fire holds it while it bounds a read,
	// so that a change of phase after it waits for the bound to be set.
	mu    sync.Mutex
	phase watchPhase
	// fired is set once the context ended and fire ran, or runs.
	fired bool
}

// watchQuery starts the watch of the portal p's query context ctx, in
// the start phase; ctx can end.
func (p *portal) watchQuery(ctx context.Context) *queryWatch {
	w := &p.watchBox
	w.p, w.ctx = p, ctx
	w.stop = context.AfterFunc(ctx, w.fire)
	return w
}

// fire acts on the end of the context for the phase the stream is in.
func (w *queryWatch) fire() {
	w.mu.Lock()
	w.fired = true
	switch w.phase {
	case watchStart:
		w.p.interrupt()
	case watchRows:
		w.mu.Unlock()
		w.p.r.fail(w.ctx.Err(), true)
		return
	case watchClosing:
		w.p.boundEnd()
	}
	w.mu.Unlock()
}

// started ends the start phase. It reports false when the context ended
// meanwhile, and the watch does nothing from then on: the read was
// bounded, or the context's end was seen before its watch ran.
func (w *queryWatch) started() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired || w.ctx.Err() != nil {
		w.phase = watchOff
		return false
	}
	w.phase = watchBinding
	return true
}

// opened hands the watch to the open rows: an end of the context that
// came after start failed the stream as soon as they are.
func (w *queryWatch) opened() {
	w.mu.Lock()
	w.phase = watchRows
	fired := w.fired
	w.mu.Unlock()
	if fired {
		go w.p.r.fail(w.ctx.Err(), true)
	}
}

// closing hands the watch to the rows' Close, whose end reads without a
// bound may be bounded by it (portal.watchEnd).
func (w *queryWatch) closing() {
	w.mu.Lock()
	w.phase = watchClosing
	w.mu.Unlock()
}

// ended reports whether the context ended while the watch was on.
func (w *queryWatch) ended() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}
