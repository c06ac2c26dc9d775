package jsonstream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestPlanEndWholeInputSpace checks planEnd over every combination of its
// inputs against the rules of an ending, each stated on its own.
func TestPlanEndWholeInputSpace(t *testing.T) {
	const drain = 5 * time.Millisecond
	bools := []bool{false, true}
	n := 0
	for _, cursor := range bools {
		for _, callersTx := range bools {
			for _, writes := range bools {
				if cursor && writes {
					continue // cursor mode runs only reads
				}
				for _, mode := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
					for _, failed := range bools {
						for _, canCut := range bools {
							f := endFacts{cursor: cursor, callersTx: callersTx, writes: writes, closeMode: mode, failed: failed, canCut: canCut}
							p := planEnd(f, drain)
							name := fmt.Sprintf("%+v", f)
							n++

							// Data: nothing that may cut ends a caller's
							// transaction or a write early.
							if callersTx || writes {
								assert.Equal(t, readToEnd, p.read, "%s: a transaction or a write could be cut", name)
							}
							// A connection jsonstream did not dial can only
							// be read to the end.
							if !canCut {
								assert.Equal(t, readToEnd, p.read, name)
								assert.Zero(t, p.stmtBound, name)
							}
							// Free to choose, a failed stream ends promptly;
							// otherwise the close mode decides.
							if canCut && !callersTx && !writes {
								want := map[CloseMode]endRead{CloseAuto: readBounded, CloseCut: readLook, CloseDrain: readToEnd}[mode]
								if failed {
									want = readBounded
								}
								assert.Equal(t, want, p.read, name)
							}
							// The statement that ends a cursor.
							switch {
							case !cursor:
								assert.Equal(t, stmtNone, p.stmt, name)
							case callersTx:
								assert.Equal(t, stmtClose, p.stmt, name)
							default:
								assert.Equal(t, stmtRollback, p.stmt, name)
							}
							// The end statement is bounded exactly when the
							// read is, and a failed stream's more tightly.
							switch {
							case !cursor || p.read != readBounded:
								assert.Zero(t, p.stmtBound, name)
							case failed:
								assert.Equal(t, failedEndTimeout, p.stmtBound, name)
							default:
								assert.Equal(t, cursorEndTimeout, p.stmtBound, name)
							}
							assert.Equal(t, cursor, p.cursor, name)
						}
					}
				}
			}
		}
	}
	assert.Equal(t, 72, n, "the input space")
}

// TestPlanEndCases: the plans of endings a reader asks about, written out.
func TestPlanEndCases(t *testing.T) {
	const drain = 5 * time.Millisecond
	for _, tc := range []struct {
		what string
		f    endFacts
		want endPlan
	}{
		{"a paused cursor stream in the caller's transaction, closed under CloseCut",
			endFacts{cursor: true, callersTx: true, closeMode: CloseCut, canCut: true},
			endPlan{read: readToEnd, stmt: stmtClose, cursor: true}},
		{"QueryRow in the default mode",
			endFacts{closeMode: CloseAuto, canCut: true},
			endPlan{read: readBounded}},
		{"an INSERT … RETURNING closed early under CloseCut",
			endFacts{writes: true, closeMode: CloseCut, canCut: true},
			endPlan{read: readToEnd}},
		{"a cursor stream Canceled under CloseDrain, its batch in flight",
			endFacts{cursor: true, closeMode: CloseDrain, failed: true, canCut: true},
			endPlan{read: readBounded, stmt: stmtRollback, stmtBound: failedEndTimeout, cursor: true}},
		{"a cursor stream closed early under CloseAuto with a drain timeout past a second",
			endFacts{cursor: true, closeMode: CloseAuto, canCut: true},
			endPlan{read: readBounded, stmt: stmtRollback, stmtBound: cursorEndTimeout, cursor: true}},
		{"a stream over another driver's connection under CloseCut",
			endFacts{closeMode: CloseCut},
			endPlan{read: readToEnd}},
		{"a locking read's portal closed early in the caller's transaction",
			endFacts{portal: true, callersTx: true, locks: true, closeMode: CloseCut, canCut: true},
			endPlan{read: readToEnd, stmt: stmtClose, portal: true, finish: true, lockRest: true}},
		{"a locking read's cursor closed early in the caller's transaction",
			endFacts{cursor: true, callersTx: true, locks: true, closeMode: CloseAuto, canCut: true},
			endPlan{read: readToEnd, stmt: stmtClose, cursor: true, lockRest: true}},
		{"a locking read's portal Canceled in the caller's transaction",
			endFacts{portal: true, callersTx: true, locks: true, closeMode: CloseAuto, failed: true, canCut: true},
			endPlan{read: readToEnd, stmt: stmtClose, portal: true}},
		{"a locking read's portal closed early outside a transaction",
			endFacts{portal: true, locks: true, closeMode: CloseAuto, canCut: true},
			endPlan{read: readBounded, stmt: stmtRollback, stmtBound: cursorEndTimeout, portal: true}},
		{"a locking read through lib/pq's protocol in the caller's transaction",
			endFacts{callersTx: true, locks: true, closeMode: CloseAuto, canCut: true},
			endPlan{read: readToEnd}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			assert.Equal(t, tc.want, planEnd(tc.f, drain))
		})
	}
	// A drain timeout longer than the end statement's own bound is the
	// bound.
	p := planEnd(endFacts{cursor: true, closeMode: CloseAuto, canCut: true}, 3*time.Second)
	assert.Equal(t, 3*time.Second, p.stmtBound)
	p = planEnd(endFacts{cursor: true, closeMode: CloseAuto, failed: true, canCut: true}, time.Second)
	assert.Equal(t, time.Second, p.stmtBound)
}

// TestEndOutcome: the Outcome of a Close, from its plan and what happened.
func TestEndOutcome(t *testing.T) {
	single, cursor := endPlan{}, endPlan{cursor: true}
	ctxErr := context.Canceled
	for _, tc := range []struct {
		plan       endPlan
		whole, cut bool
		ctxErr     error
		want       Outcome
	}{
		{single, true, false, nil, OutcomeComplete},
		{cursor, true, false, nil, OutcomeComplete},
		{single, true, false, ctxErr, OutcomeComplete}, // every row arrived before the context ended
		{single, false, false, ctxErr, OutcomeContext},
		{cursor, false, true, ctxErr, OutcomeContext},
		{single, false, true, nil, OutcomeCut},
		{cursor, false, true, nil, OutcomeCut},
		{single, false, false, nil, OutcomeDrained},
		{cursor, false, false, nil, OutcomeCursorClosed},
	} {
		assert.Equal(t, tc.want, tc.plan.outcome(tc.whole, tc.cut, tc.ctxErr), "%+v", tc)
	}
}

// TestPlanEndWriteRest: only a failed portal stream of a statement that
// writes, outside the caller's transaction, reads on the rest of its
// result to commit a small one (writeRestBytes); every other ending
// does as before.
func TestPlanEndWriteRest(t *testing.T) {
	bools := []bool{false, true}
	for _, callersTx := range bools {
		for _, writes := range bools {
			for _, failed := range bools {
				f := endFacts{portal: true, callersTx: callersTx, writes: writes, failed: failed, canCut: true}
				p := planEnd(f, DefaultDrainTimeout)
				name := fmt.Sprintf("%+v", f)
				assert.Equal(t, writes && failed && !callersTx, p.writeRest, name)
				if p.writeRest {
					assert.Equal(t, stmtRollback, p.stmt, "%s: a longer rest is rolled back", name)
				}
			}
		}
	}
}
