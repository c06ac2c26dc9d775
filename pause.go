package jsonstream

import (
	"sync"
	"time"
)

// pauser is the pause machinery of one stream. It is allocated by the
// first Pause, so a stream that never pauses does not pay for it.
type pauser struct {
	// mu guards every field below and orders Pause, Resume, the timer and
	// the stream's end against one another.
	mu sync.Mutex
	// resume is closed to wake a Next blocked by the pause; a new one is
	// made for each pause.
	resume chan struct{}
	// timer fires the pause timeout; stopped by Resume and by the end of the
	// stream. release ends a resumable stream's server-side query after a
	// long pause (WithResumeAfterPause), and is stopped likewise.
	timer, release *time.Timer
	// generation tells a timer of an earlier pause from the current one.
	generation uint64
	pausedAt   time.Time
	total      time.Duration
	pauses     int64
	timeouts   int64
	// resumes counts the pauses ended by Resume or ResumeOnPauseTimeout;
	// the one pause more that pauses may count ended with the stream.
	resumes int64
	// last is how long the last pause that ended lasted.
	last time.Duration
}

// expirer is what a pause timer tells that its pause timed out: the
// stream (rows.pauseExpired).
type expirer interface{ pauseExpired(generation uint64) }

// begin starts a pause; the stream's state has just moved to Paused. A
// timeout above zero arms a timer that tells e, with this pause's
// generation; only then is anything allocated for it. Called with mu
// held.
func (p *pauser) begin(timeout time.Duration, e expirer) {
	p.resume = make(chan struct{})
	p.pausedAt = time.Now()
	p.pauses++
	p.generation++
	if timeout > 0 {
		generation := p.generation
		p.timer = time.AfterFunc(timeout, func() { e.pauseExpired(generation) })
	}
}

// end finishes the current pause, if any: it stops the timer, adds up the
// paused time and wakes a blocked Next. Called with mu held.
func (p *pauser) end() {
	if p.resume == nil {
		return
	}
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if p.release != nil {
		p.release.Stop()
		p.release = nil
	}
	p.last = time.Since(p.pausedAt)
	p.total += p.last
	close(p.resume)
	p.resume = nil
}

// snapshot fills st's State and pause figures from one moment: Pause,
// Resume and the pause timer change the state under mu, so the state that
// state returns here cannot pair a Running stream with a pause in
// progress. A failure
// or the end of the result changes the state before it ends the pause;
// the pause then counts in PausedTotal but no longer in PausedNow. Called
// with mu held.
func (p *pauser) snapshot(state func() State, st *Stats) {
	st.State = state()
	st.Pauses, st.PauseTimeouts, st.PausedTotal = p.pauses, p.timeouts, p.total
	if p.resume == nil {
		return
	}
	// At least 1ns, so that PausedNow > 0 exactly while Paused even on a
	// coarse clock.
	now := max(time.Since(p.pausedAt), 1)
	st.PausedTotal += now
	if st.State == Paused {
		st.PausedNow = now
	}
}

// wait returns the channel that the current pause closes when it ends, or
// nil when no pause is in progress.
func (p *pauser) wait() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		return nil
	}
	return p.resume
}

// await returns nil once the stream is Running (or Complete), or the error
// that ended it.
func (r *rows) await() error {
	for {
		switch r.state.load() {
		case Running, Complete:
			return nil
		case Failed:
			return r.err()
		case Closed:
			return ErrRowsClosed
		case Paused:
			resumed := r.pause.Load().wait()
			if resumed == nil {
				continue // the pause ended between the two loads
			}
			select {
			case <-resumed:
			case <-r.ctx.Done():
				r.fail(r.ctx.Err(), !r.innerCtx)
				return r.err()
			case <-r.txDone():
				r.fail(r.txCtx.Err(), true)
				return r.err()
			}
		}
	}
}

// endPause ends a pause in progress, waking a blocked Next.
func (r *rows) endPause() {
	if p := r.pause.Load(); p != nil {
		p.mu.Lock()
		p.end()
		p.mu.Unlock()
	}
}

// Pause implements Controller.
func (r *rows) Pause() error {
	if rr := r.resumer; rr != nil {
		if held, err := rr.control(rr.pauseRetry); held {
			return err
		}
	}
	return r.pauseNow()
}

// pauseNow is Pause of these rows themselves.
func (r *rows) pauseNow() error {
	p := r.pauser()
	var event uint64
	p.mu.Lock()
	defer func() { r.deliverQueued(event) }() // after the unlock: the observer runs unlocked
	defer p.mu.Unlock()
	for {
		switch s := r.state.load(); s {
		case Paused:
			return nil
		case Running:
			if r.state.cas(Running, Paused) {
				p.begin(time.Duration(r.pauseTimeout.Load()), r)
				if rr := r.resumer; rr != nil && rr.set.afterPause > 0 {
					generation := p.generation
					p.release = time.AfterFunc(rr.set.afterPause, func() { r.pauseReleased(generation) })
				}
				event = r.queuePause(EventPaused, p, 0)
				return nil
			}
		default:
			return ended(s)
		}
	}
}

// pauser returns the pause machinery, allocating it on first use.
func (r *rows) pauser() *pauser {
	if p := r.pause.Load(); p != nil {
		return p
	}
	r.pause.CompareAndSwap(nil, new(pauser))
	return r.pause.Load()
}

// pauseCount returns how many pauses the stream has had; a stream that
// never paused has no pauser and takes no lock.
func (r *rows) pauseCount() int64 {
	p := r.pause.Load()
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pauses
}

// Resume implements Controller.
func (r *rows) Resume() error {
	if rr := r.resumer; rr != nil {
		if held, err := rr.control(rr.resumeRetry); held {
			return err
		}
	}
	return r.resumeNow()
}

// resumeNow is Resume of these rows themselves.
func (r *rows) resumeNow() error {
	p := r.pause.Load()
	if p == nil {
		if s := r.state.load(); s.final() {
			return ended(s)
		}
		return nil // never paused
	}
	var event uint64
	p.mu.Lock()
	defer func() { r.deliverQueued(event) }() // after the unlock, as in Pause
	defer p.mu.Unlock()
	switch s := r.state.load(); s {
	case Running:
		return nil
	case Paused:
		if r.state.cas(Paused, Running) {
			p.end()
			p.resumes++
			event = r.queuePause(EventResumed, p, max(p.last, 1))
			return nil
		}
		return ended(r.state.load())
	default:
		return ended(s)
	}
}

// pauseExpired runs on the pause timer of pause number generation.
func (r *rows) pauseExpired(generation uint64) {
	p := r.pause.Load()
	p.mu.Lock()
	if p.generation != generation || r.state.load() != Paused {
		p.mu.Unlock()
		return // Resume, Close or a later pause came first
	}
	p.timeouts++
	if r.settings.observer != nil && !r.observeTimeout(p, generation) {
		return // Resume or Close came while the observer heard of it
	}
	var event uint64 // the pause's end, for the observer
	failed := false
	if r.settings.onPauseTimeout == ResumeOnPauseTimeout {
		if r.state.cas(Paused, Running) {
			p.end()
			p.resumes++
			event = r.queuePause(EventResumed, p, max(p.last, 1))
		}
	} else if r.failState(ErrPauseTimeout, true) {
		// Still under p.mu: a Resume cannot slip in between the check
		// above and the failure.
		p.end()
		failed = true
	}
	p.mu.Unlock()
	r.deliverQueued(event)
	if failed {
		r.release()
	}
}

// pauseReleased ends the server-side query of a resumable stream paused
// longer than WithResumeAfterPause, if this is still the pause that began
// the timer: the stream fails with ErrPauseReleased from here, and the
// pause goes on in its resumeRows (release.go), which continues it from
// its key on Resume. Under p.mu, a Resume either came first or finds the
// pause in resumeRows.
func (r *rows) pauseReleased(generation uint64) {
	p := r.pause.Load()
	p.mu.Lock()
	if p.generation != generation || r.state.load() != Paused {
		p.mu.Unlock()
		return // Resume, Close or a later pause came first
	}
	r.resumer.holdPause(r, p.pausedAt, time.Duration(r.pauseTimeout.Load()))
	released := r.failState(ErrPauseReleased, true)
	if released {
		p.end()
	} else {
		r.resumer.dropPause()
	}
	p.mu.Unlock()
	if released {
		r.release()
	}
}

// SetPauseTimeout implements Controller.
func (r *rows) SetPauseTimeout(d time.Duration) error {
	if d < 0 {
		return invalid("SetPauseTimeout", d, "negative duration")
	}
	r.pauseTimeout.Store(int64(d))
	return nil
}
