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

// holdPause takes over the pause that began at pausedAt, which the rows
// are about to end with ErrPauseReleased: from now on the Stream's
// controls come here (control). Called by the pause's timer, with the
// pauser's lock held.
func (rr *resumeRows) holdPause(pausedAt time.Time) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.retry()
	rr.pausing, rr.wake, rr.pausedAt = true, make(chan struct{}), pausedAt
}

// dropPause gives the controls back when the rows did not fail after all
// (their end came first).
func (rr *resumeRows) dropPause() {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.retrying, rr.pausing, rr.wake = false, false, nil
	rr.stopCancel()
}

// waitReleased waits for the Resume that ends a pause held here, and
// returns nil then; or the error of the Cancel, the context or the pause
// timeout that ends it first (the timeout counts from the pause's start;
// ResumeOnPauseTimeout resumes instead). The rows' EventResumed or
// EventEnded tell the Observer.
func (rr *resumeRows) waitReleased() (err error) {
	old := rr.cur
	var expired <-chan time.Time
	if d := time.Duration(old.pauseTimeout.Load()); d > 0 {
		t := time.NewTimer(max(time.Until(rr.pausedAt.Add(d)), 0))
		defer t.Stop()
		expired = t.C
	}
	defer func() {
		if err != nil {
			rr.mu.Lock()
			rr.retrying, rr.pausing, rr.wake = false, false, nil
			rr.stopCancel()
			rr.mu.Unlock()
			old.failure.Store(&err)
		}
	}()
	for {
		rr.mu.Lock()
		wake, stop, pausing := rr.wake, rr.stop, rr.pausing
		rr.mu.Unlock()
		if !pausing {
			old.observeReleasedResume(time.Since(rr.pausedAt))
			return nil
		}
		select {
		case <-wake:
		case <-stop:
			return ErrCanceled
		case <-rr.ctx.Done():
			return rr.ctx.Err()
		case <-expired:
			if old.settings.onPauseTimeout != ResumeOnPauseTimeout {
				return ErrPauseTimeout
			}
			rr.mu.Lock()
			rr.resumeRetry()
			rr.mu.Unlock()
			expired = nil
		}
	}
}
