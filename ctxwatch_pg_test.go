package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowCommitSetup makes jsonstream_slow_commit(round, ms), a function
// whose row is inserted at once and whose commit then takes ms
// milliseconds (a deferred constraint trigger sleeps): a QueryRow of it is
// read whole in the first batch, and its Sync's ReadyForQuery comes ms
// later.
func slowCommitSetup(t *testing.T) *sql.DB {
	t.Helper()
	setup := openPG(t, "postgres", "")
	for _, stmt := range []string{
		"CREATE TABLE IF NOT EXISTS jsonstream_slow_commit (round bigint, ms int)",
		`CREATE OR REPLACE FUNCTION jsonstream_slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS
		 $$ BEGIN PERFORM pg_sleep(NEW.ms / 1000.0); RETURN NULL; END $$`,
		"DROP TRIGGER IF EXISTS jsonstream_slow_commit_sleep ON jsonstream_slow_commit",
		`CREATE CONSTRAINT TRIGGER jsonstream_slow_commit_sleep AFTER INSERT ON jsonstream_slow_commit
		 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION jsonstream_slow_commit_sleep()`,
		`CREATE OR REPLACE FUNCTION jsonstream_slow_commit(round bigint, ms int) RETURNS bigint LANGUAGE sql AS
		 $$ INSERT INTO jsonstream_slow_commit VALUES (round, ms) RETURNING round $$`,
	} {
		_, err := setup.Exec(stmt)
		require.NoError(t, err, stmt)
	}
	return setup
}

// TestPortalWholeResultEnd: a QueryRow read whole in its first batch
// waits for its Sync's ReadyForQuery (the implicit transaction's commit)
// without a bound of its own, as lib/pq does, also when its context can
// end: a commit that takes longer than any bound of jsonstream's commits,
// and the connection stays. When the context ends meanwhile, the wait
// gets the bound of a failed end (its query's watch, in the closing
// phase) and the connection is cut: Close returns the context's error,
// and the stream does not count as read whole. The server carries the
// commit out whatever the client does.
func TestPortalWholeResultEnd(t *testing.T) {
	setup := slowCommitSetup(t)
	db := openPG(t, DriverName, "")
	db.SetMaxOpenConns(1)
	// committed waits for round's row to be committed: the server commits
	// once the trigger's sleep is over, after a cut too.
	committed := func(round int64) bool {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			if err := setup.QueryRow("SELECT count(*) FROM jsonstream_slow_commit WHERE round = $1", round).Scan(&n); err == nil && n == 1 {
				return true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return false
	}

	t.Run("the context stays", func(t *testing.T) {
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		ms := int(cursorEndTimeout/time.Millisecond) + 500 // longer than any bound the end may have
		rec := &recorder{}
		var got int64
		require.NoError(t, db.QueryRowContext(ctx, "SELECT jsonstream_slow_commit($1, $2)", round, ms, mustStream(t, WithObserver(rec))).Scan(&got))
		assert.Equal(t, round, got)
		ev := rec.ended(t)
		assert.Equal(t, ModePortal, ev.Mode)
		assert.Equal(t, OutcomeComplete, ev.Outcome, "read whole")
		assert.False(t, ev.ConnCut)
		assert.True(t, committed(round))
		assert.Equal(t, pid, pidOf(t, db), "the connection was cut")
	})

	t.Run("the context ends", func(t *testing.T) {
		pid := pidOf(t, db)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		round := time.Now().UnixNano()
		const ms = 4000
		rec := &recorder{}
		rows, err := db.QueryContext(ctx, "SELECT jsonstream_slow_commit($1, $2)", round, ms, mustStream(t, WithObserver(rec)))
		require.NoError(t, err)
		require.True(t, rows.Next())
		var got int64
		require.NoError(t, rows.Scan(&got))
		// Close waits for the commit's reply; the context ends meanwhile.
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		closeErr := rows.Close()
		took := time.Since(start)
		assert.ErrorIs(t, closeErr, context.Canceled, "Close reported the commit's reply")
		assert.Less(t, took, ms*time.Millisecond/2, "the end waited for the commit")
		ev := rec.ended(t)
		assert.NotEqual(t, OutcomeComplete, ev.Outcome, "the stream counts as whole without its commit's reply")
		assert.True(t, ev.ConnCut)
		assert.NotEqual(t, pid, pidOf(t, db), "the connection was kept, in the middle of the commit")
		assert.True(t, committed(round), "the server commits what it was asked to")
	})
}

// TestPortalContextEndBeforeRowsOpen: a context that ends after the
// query's first row came and before its rows are open (queryWatch's
// binding phase) fails the stream as soon as they are: its Next returns
// the context's error. The driver's rows are read directly, without
// database/sql's own watch of the context.
func TestPortalContextEndBeforeRowsOpen(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	portalStarted = func(p *portal) {
		cancel()
		require.Eventually(t, p.watch.ended, 5*time.Second, time.Millisecond, "the watch did not run")
	}
	t.Cleanup(func() { portalStarted = nil })
	require.NoError(t, pinnedConn(t, db).Raw(func(dc any) error {
		ir, err := dc.(*conn).QueryContext(ctx, "SELECT g FROM jsonstream_test_rows WHERE g <= 100000 ORDER BY g", nil)
		require.NoError(t, err, "the query's reply came before its context ended")
		portalStarted = nil
		r := ir.(*rows)
		require.Eventually(t, func() bool { return r.state.load() == Failed }, 5*time.Second, time.Millisecond, "the stream did not fail")
		dest := make([]driver.Value, 1)
		assert.ErrorIs(t, r.Next(dest), context.Canceled)
		return r.Close()
	}))
}
