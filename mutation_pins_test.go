package jsonstream

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRedactPostgresqlScheme: a DSN written with the "postgresql://"
// scheme is read as a URL like "postgres://" is, so a piece of its
// password that url.Parse quotes alone (as a port) is masked too.
func TestRedactPostgresqlScheme(t *testing.T) {
	rd := newRedactor("postgresql://u:Hunter2Secret/tail@host/db")
	assert.Equal(t, "postgresql://u:xxxxx@host/db", rd.masked)
	assert.Equal(t, `invalid port ":xxxxx" after host`,
		rd.redactString(`invalid port ":Hunter2Secret" after host`))
}

// TestRedactAdjacentSecretsAreOneMask: occurrences of the password that
// touch are hidden by one mask, so the mask does not tell how often, or
// how long, the password showed.
func TestRedactAdjacentSecretsAreOneMask(t *testing.T) {
	rd := newRedactor("host=h password=S3cret")
	assert.Equal(t, `got "xxxxx"`, rd.redactString(`got "S3cretS3cret"`))
}

// TestRedactOverlappingOccurrences: where occurrences of a password
// overlap in a message, all of them are masked, leaving no tail of one in
// view.
func TestRedactOverlappingOccurrences(t *testing.T) {
	rd := newRedactor("host=h password=HaHaHaHa")
	assert.Equal(t, `got "xxxxx"`, rd.redactString(`got "HaHaHaHaHa"`))
}

// TestRedactDecodedKeyValuePassword: a key=value password with backslash
// escapes is masked as lib/pq decodes it, for an error that quotes the
// password it used.
func TestRedactDecodedKeyValuePassword(t *testing.T) {
	rd := newRedactor(`host=h password=esc\ aped\\S3cret`)
	got := rd.redactString(`the password was esc aped\S3cret.`)
	assert.NotContains(t, got, "S3cret")
	assert.Equal(t, `the password was xxxxx.`, got)
}

// TestRedactDecodedURLPasswords: a URL password is masked as url.Parse
// decodes it, which differs between the userinfo (a '+' stays a '+') and
// the query (a '+' is a space).
func TestRedactDecodedURLPasswords(t *testing.T) {
	rd := newRedactor("postgres://u:a+b%21S3cret@h/db")
	assert.Equal(t, `password "xxxxx" rejected`, rd.redactString(`password "a+b!S3cret" rejected`))

	rd = newRedactor("postgres://u@h/db?password=a+b%21S3cret")
	assert.Equal(t, `password "xxxxx" rejected`, rd.redactString(`password "a b!S3cret" rejected`))
}

// TestRedactQueryEscapedPassword: a key=value password that an error
// shows query-escaped (as in a URL built from the DSN) is masked too.
func TestRedactQueryEscapedPassword(t *testing.T) {
	rd := newRedactor("host=h password='S3cret pass!'")
	got := rd.redactString(`GET /connect?pw=S3cret+pass%21: refused`)
	assert.NotContains(t, got, "S3cret")
	assert.Equal(t, `GET /connect?pw=xxxxx: refused`, got)
}

// TestRedactLeavesPQErrorWithPasswordWord: a *pq.Error is the server's
// own report, which never echoes the DSN: it passes through as the same
// value even when its message happens to hold the password's text, so
// that code asserting *pq.Error keeps working.
func TestRedactLeavesPQErrorWithPasswordWord(t *testing.T) {
	rd := newRedactor("host=h password=authentication")
	pqErr := &pq.Error{Code: "28P01", Message: `password authentication failed for user "u"`}
	got := rd.redact(pqErr)
	assert.Same(t, pqErr, got)
	var asPQ *pq.Error
	assert.True(t, errors.As(got, &asPQ))
}

// TestRedactThreeBytePasswordInsideWord: a password of three bytes is
// still short, so inside a longer word it is left alone, while standing
// alone it is masked.
func TestRedactThreeBytePasswordInsideWord(t *testing.T) {
	rd := newRedactor("host=h password=abc")
	assert.Equal(t, `the abcd table: "xxxxx"`, rd.redactString(`the abcd table: "abc"`))
}

// TestRedactURLQueryPasswords: every query parameter of a URL DSN whose
// name ends in "password" is a password, wherever it stands in the query:
// the masked DSN hides exactly its value, and an error quoting the value
// alone is masked too.
func TestRedactURLQueryPasswords(t *testing.T) {
	rd := newRedactor("postgres://u@h/db?sslmode=disable&application_name=app&password=S3cret")
	assert.Equal(t, "postgres://u@h/db?sslmode=disable&application_name=app&password=xxxxx", rd.masked)

	rd = newRedactor("postgres://u@h/db?sslpassword=KeyS3cret")
	assert.Equal(t, "postgres://u@h/db?sslpassword=xxxxx", rd.masked)
	assert.Equal(t, `cannot decrypt the key with "xxxxx"`, rd.redactString(`cannot decrypt the key with "KeyS3cret"`))
}

// TestRedactFourBytePieceOfURLPassword: a piece of four bytes after a
// delimiter of a URL password, which url.Parse makes a path or query of
// its own, is masked where an error quotes it alone.
func TestRedactFourBytePieceOfURLPassword(t *testing.T) {
	rd := newRedactor("postgres://u:Hunter2Secret/tail@host/db")
	assert.Equal(t, `database "xxxxx" does not exist`, rd.redactString(`database "tail" does not exist`))
}

// TestObserverCloseWaitsForEndedDeliveredElsewhere: when another
// goroutine is delivering the stream's events as Close fires EventEnded,
// that goroutine delivers EventEnded as well, and Close returns only once
// the observer is done with it.
func TestObserverCloseWaitsForEndedDeliveredElsewhere(t *testing.T) {
	inPaused, releasePaused := make(chan struct{}), make(chan struct{})
	inEnded, releaseEnded := make(chan struct{}), make(chan struct{})
	observer := ObserverFunc(func(e Event) {
		switch e.Kind {
		case EventPaused:
			close(inPaused)
			<-releasePaused
		case EventEnded:
			close(inEnded)
			<-releaseEnded
		}
	})
	db, _ := openFake(t, countRows(5))
	s := mustStream(t, WithObserver(observer))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	require.True(t, rows.Next())

	paused := make(chan error, 1)
	go func() { paused <- s.Pause() }()
	select {
	case <-inPaused:
	case <-time.After(5 * time.Second):
		t.Fatal("the observer did not get EventPaused")
	}
	// Whatever fails below, nothing may stay blocked in the observer.
	defer func() {
		select {
		case <-releaseEnded:
		default:
			close(releaseEnded)
		}
	}()
	defer func() {
		select {
		case <-releasePaused:
		default:
			close(releasePaused)
		}
	}()

	closed := make(chan error, 1)
	go func() { closed <- rows.Close() }()
	r := s.bound.Load()
	require.Eventually(t, func() bool {
		r.obs.mu.Lock()
		defer r.obs.mu.Unlock()
		return len(r.obs.queue) == 1
	}, 5*time.Second, time.Millisecond, "Close queues EventEnded behind the pause's delivery")

	close(releasePaused)
	select {
	case <-inEnded:
	case <-time.After(5 * time.Second):
		t.Fatal("EventEnded was not delivered")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the observer still had EventEnded", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(releaseEnded)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return once EventEnded was delivered")
	}
	require.NoError(t, <-paused)
}

// TestPauseTimeoutSparesALaterPause: a pause timeout whose observer
// resumes the pause and begins a new one, without a timeout of its own,
// takes no effect: the new pause holds until Resume, and the stream then
// reads every row.
func TestPauseTimeoutSparesALaterPause(t *testing.T) {
	const n = 5
	var s *Stream
	var once sync.Once
	calls := make(chan error, 3)
	observer := ObserverFunc(func(e Event) {
		if e.Kind != EventPauseTimeout {
			return
		}
		once.Do(func() {
			calls <- s.SetPauseTimeout(0)
			calls <- s.Resume()
			calls <- s.Pause()
		})
	})
	db, _ := openFake(t, countRows(n))
	s = mustStream(t, WithObserver(observer), WithPauseTimeout(20*time.Millisecond))
	rows, err := db.Query("q", s)
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	require.NoError(t, s.Pause())
	for range 3 {
		select {
		case err := <-calls:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("the observer did not get EventPauseTimeout")
		}
	}
	require.Never(t, func() bool { return s.State() != Paused }, 300*time.Millisecond, 5*time.Millisecond,
		"the expired timeout must leave the second pause alone")
	require.NoError(t, s.Resume())
	got := 1
	for rows.Next() {
		got++
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, n, got)
}

// TestCursorProbeFailureLeavesStream: when asking the server whether the
// session is in a transaction block fails, nothing of the query ran, so
// its Stream is left for another query.
func TestCursorProbeFailureLeavesStream(t *testing.T) {
	probeErr := sqlStateErr("25P02")
	d := &scriptDB{rows: 3, fail: map[string]error{"SAVEPOINT": probeErr}}
	db := openScript(t, d, WithFetchSize(5))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, "SET x = 1") // so that the probe is asked
	require.NoError(t, err)

	s := mustStream(t)
	_, err = conn.QueryContext(ctx, "SELECT data FROM docs", s)
	require.ErrorIs(t, err, probeErr)

	d.mu.Lock()
	d.fail = nil
	d.mu.Unlock()
	rows, err := conn.QueryContext(ctx, "SELECT data FROM docs", s)
	require.NoError(t, err, "the Stream is free for another query")
	assert.Equal(t, 3, drainRows(t, rows))
}

// TestCursorFirstFetchClientErrorClosesCursorInCallersTx: when the first
// FETCH fails with an error of the client, which leaves the caller's
// transaction alive, the declared cursor is closed in it, so that the
// transaction goes on without it.
func TestCursorFirstFetchClientErrorClosesCursorInCallersTx(t *testing.T) {
	clientErr := errors.New("fake: cannot decode the batch")
	d := &scriptDB{rows: 3, fail: map[string]error{"FETCH": clientErr}}
	db := openScript(t, d, WithFetchSize(5))
	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Query("SELECT data FROM docs")
	require.ErrorIs(t, err, clientErr)
	assert.Equal(t, []string{
		"DECLARE jsonstream_cursor_1" + declared,
		"FETCH FORWARD 5 FROM jsonstream_cursor_1",
		"CLOSE jsonstream_cursor_1",
	}, d.statements())
	require.NoError(t, tx.Rollback())
}
