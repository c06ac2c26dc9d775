package jsonstream

import (
	"errors"
	"time"
)

// A paused stream holds its server-side query: a snapshot that keeps
// VACUUM from removing the rows deleted since (the xmin horizon), its
// locks, and on a hot standby the WAL replay it conflicts with. A
// resumable stream (WithResumeKey) with WithResumeAfterPause lets all of
// it go once a pause lasts longer than the given time: it ends the
// server-side query at once, as a failure would (the portal is closed, or
// the cursor, and the connection stays; a single statement's connection
// is cut), keeps the pause, and on Resume continues from its last key as
// after a failure (resume.go). To the Stream it stays Paused meanwhile;
// Cancel, the context and the pause timeout end it as they end a pause,
// and a Close makes it Closed, its query ended by the release as an early
// close would have ended it (rows.closedReleased).

// ErrPauseReleased is the cause, in EventContinued's Err, of a
// continuation made after a pause longer than WithResumeAfterPause let
// the server-side query go.
var ErrPauseReleased = errors.New("jsonstream: the server-side query was ended after a long pause")

// WithResumeAfterPause makes a resumable stream (WithResumeKey) end its
// server-side query once a pause has lasted d, and continue from its key
// on Resume. 0, the default, keeps the query through any pause. An option
// for a Stream or a context, as WithResumeKey.
func WithResumeAfterPause(d time.Duration) Option {
	return func(s *settings) error {
		if d < 0 {
			return invalid("WithResumeAfterPause", d, "negative duration")
		}
		if s.resume == nil {
			s.resume = &resumeSettings{policy: DefaultRetryPolicy}
		}
		s.resume.afterPause = d
		return nil
	}
}

// holdPause takes over the pause that began at pausedAt, which the rows r
// are about to end with ErrPauseReleased: from now on the Stream's
// controls come here (control), and the pause's timeout d, counted from
// pausedAt, is timed here (heldPauseExpired), as the rows timed it.
// Called by the pause's timer, with the pauser's lock held.
func (rr *resumeRows) holdPause(r *rows, pausedAt time.Time, d time.Duration) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.retry()
	rr.pausing, rr.wake, rr.pausedAt, rr.heldAt = true, make(chan struct{}), pausedAt, time.Now()
	rr.holds++
	if d > 0 {
		hold := rr.holds
		rr.expiry = time.AfterFunc(max(time.Until(pausedAt.Add(d)), 0), func() { rr.heldPauseExpired(r, hold) })
	}
}

// dropPause gives the controls back when the rows did not fail after all
// (their end came first).
func (rr *resumeRows) dropPause() {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.endControls()
}

// heldStats sets st's State, and the figures of a pause held here, from
// one moment while the controls come here; called with the pauser's lock
// held, after its snapshot.
func (rr *resumeRows) heldStats(st *Stats) {
	if rr == nil {
		return
	}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	switch {
	case !rr.retrying:
	case rr.endErr != nil:
		st.State = Failed
	case rr.pausing:
		st.State = Paused
		if !rr.heldAt.IsZero() {
			st.PausedNow = max(time.Since(rr.pausedAt), 1)
			st.PausedTotal += time.Since(rr.heldAt)
		}
	default:
		st.State = Running
	}
}

// endControls gives the Stream's controls back to the rows; called with
// mu held.
func (rr *resumeRows) endControls() {
	rr.retrying, rr.pausing, rr.wake, rr.heldAt = false, false, nil, time.Time{}
	rr.stopCancel()
	rr.stopExpiry()
}

// stopExpiry stops a held pause's timeout; called with mu held.
func (rr *resumeRows) stopExpiry() {
	if rr.expiry != nil {
		rr.expiry.Stop()
		rr.expiry = nil
	}
}

// heldPauseExpired runs on the timeout of hold number hold, a pause that
// the rows r let go: as the rows' own pause timer would, it counts the
// timeout, tells the Observer (EventPauseTimeout) and ends the stream with
// ErrPauseTimeout from here, or resumes it under ResumeOnPauseTimeout, so
// that a Resume that comes later finds the stream ended, and a Next the
// continuation.
func (rr *resumeRows) heldPauseExpired(r *rows, hold uint64) {
	p := r.pause.Load() // the pause's, which it was released from
	p.mu.Lock()
	rr.mu.Lock()
	if rr.holds != hold || !rr.retrying || !rr.pausing || rr.endErr != nil {
		rr.mu.Unlock()
		p.mu.Unlock()
		return // a Resume, Cancel or Close came first
	}
	rr.expiry = nil
	p.timeouts++
	event := r.queuePause(EventPauseTimeout, p, max(time.Since(rr.pausedAt), 1))
	if r.settings.onPauseTimeout == ResumeOnPauseTimeout {
		rr.resumeRetry() // Next tells of the resume (waitReleased)
	} else {
		err := ErrPauseTimeout
		r.failure.Store(&err)
		rr.endWith(err)
	}
	rr.mu.Unlock()
	p.mu.Unlock()
	r.deliverQueued(event)
}

// waitReleased waits for the Resume that ends a pause held here, and
// returns nil then; or the error of the Cancel, the context or the pause
// timeout that ended it first (heldPauseExpired). The rows' EventResumed
// or EventEnded tell the Observer.
func (rr *resumeRows) waitReleased() (err error) {
	old := rr.cur
	defer func() {
		if err != nil {
			rr.mu.Lock()
			rr.endControls()
			rr.mu.Unlock()
			old.failure.Store(&err)
		}
	}()
	for {
		rr.mu.Lock()
		wake, stop, pausing, end := rr.wake, rr.stop, rr.pausing, rr.endErr
		rr.mu.Unlock()
		if end != nil {
			return end
		}
		if !pausing {
			old.observeReleasedResume(time.Since(rr.pausedAt))
			return nil
		}
		select {
		case <-wake:
		case <-stop:
		case <-rr.ctx.Done():
			return rr.ctx.Err()
		}
	}
}
