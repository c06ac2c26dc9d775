package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// The server-side counterparts of branches_test.go: behaviours that are
// about what the server and lib/pq do, pinned against PostgreSQL.

// TestNetworkStallInTransaction: database/sql ends a transaction's rows
// when the transaction's context ends, but cannot reach a Next stuck on a
// stalled network; the cut must free it as promptly as it does for the
// query's own context (TestNetworkStall).
func TestNetworkStallInTransaction(t *testing.T) {
	needRowsTable(t)
	srv := pgtest.Shared(t)
	p := newStallProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port()))
	db, err := sql.Open(DriverName, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", p.port()))
	require.NoError(t, err)
	defer db.Close()

	const deadline = 500 * time.Millisecond
	txCtx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	tx, err := db.BeginTx(txCtx, nil)
	require.NoError(t, err)
	defer tx.Rollback()                                                   //nolint:errcheck // the context ended it already
	rows, err := tx.QueryContext(context.Background(), bigQuery, bigRows) // a context that never ends
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	p.stalled.Store(true)
	done := make(chan struct{})
	go func() { // ended by the cut
		defer close(done)
		for rows.Next() {
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.close() // ends the stuck Next, so the test can fail instead of hanging
		<-done
		t.Fatal("Next on a stalled network outlived the transaction's context")
	}
	took := time.Since(start)
	t.Logf("Next ended %v after the transaction began (deadline %v)", took, deadline)
	assert.ErrorIs(t, rows.Err(), context.DeadlineExceeded)
	assert.Less(t, took, deadline+100*time.Millisecond, "the bound TestNetworkStall holds the query's context to")
}

// errorAfterRows fails with division by zero (22012) after 999 rows.
const errorAfterRows = `SELECT CASE WHEN g = 1000 THEN 1/(g - g) ELSE g END FROM generate_series(1, 2000) g`

func TestEarlyCloseDrainReportsServerError(t *testing.T) {
	db := openPG(t, DriverName, "")
	// CloseAuto with a drain timeout that a loaded machine cannot exceed:
	// the drain, not the cut, must meet the error.
	s := mustStream(t, WithCloseMode(CloseAuto), WithDrainTimeout(time.Minute))
	rows, err := db.Query(errorAfterRows, s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	err = rows.Close()
	var pqErr *pq.Error
	require.ErrorAs(t, err, &pqErr, "Close hid the error its drain met")
	assert.Equal(t, pqerror.DivisionByZero, pqErr.Code)
	assert.Equal(t, Closed, s.State())
}

// faultDialer dials real connections whose SetReadDeadline fails while
// the dialer is armed, for the deadlines that armed selects.
type faultDialer struct {
	armed atomic.Pointer[func(time.Time) bool]
	mu    sync.Mutex // guards conns
	conns []*faultConn
}

var errDeadlineFault = errors.New("fault: SetReadDeadline failed")

func (d *faultDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialTimeout(network, address, 0)
}

func (d *faultDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return nil, err
	}
	fc := &faultConn{Conn: c, dialer: d}
	d.mu.Lock()
	d.conns = append(d.conns, fc)
	d.mu.Unlock()
	return fc, nil
}

func (d *faultDialer) last() *faultConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[len(d.conns)-1]
}

type faultConn struct {
	net.Conn
	dialer *faultDialer
	faults atomic.Int64
	closed atomic.Bool
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	if fail := c.dialer.armed.Load(); fail != nil && (*fail)(t) {
		c.faults.Add(1)
		return errDeadlineFault
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *faultConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// TestDrainDeadlineFaultCutsConnection: when CloseAuto cannot bound its
// drain (setting the deadline fails) or cannot lift the bound afterwards
// (the next query would time out), the connection is cut and never goes
// back to the pool.
func TestDrainDeadlineFaultCutsConnection(t *testing.T) {
	needRowsTable(t)
	for _, tc := range []struct {
		name string
		rows int
		fail func(time.Time) bool
	}{
		// Left alone, the drain would read all 200,000 rows and keep the
		// connection.
		{"setting the deadline fails", 200_000, func(d time.Time) bool { return !d.IsZero() }},
		// The drain finishes; the deadline stays on the connection.
		{"clearing the deadline fails", 100, func(d time.Time) bool { return d.IsZero() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := pq.NewConnector(pgtest.DSN(t))
			require.NoError(t, err)
			c, err := NewConnector(pc)
			require.NoError(t, err)
			fd := &faultDialer{}
			pc.Dialer(NewDialer(fd)) // after NewConnector, which installs its own
			db := sql.OpenDB(c)
			defer db.Close()
			db.SetMaxOpenConns(1)
			var before, after int
			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&before))

			s := mustStream(t, WithCloseMode(CloseAuto), WithDrainTimeout(time.Minute))
			rows, err := db.Query(bigQuery, tc.rows, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			fd.armed.Store(&tc.fail)
			assert.NoError(t, rows.Close())
			fd.armed.Store(nil)
			sock := fd.last()
			require.Equal(t, int64(1), sock.faults.Load(), "the fault was not injected")
			assert.True(t, sock.closed.Load(), "the connection was not cut")

			require.NoError(t, db.QueryRow("SELECT pg_backend_pid()").Scan(&after), "the next query")
			assert.NotEqual(t, before, after, "the connection went back to the pool")
		})
	}
}

// TestCloseOnEndedStreamKeepsConnection: Close after the end of the result
// has nothing to stop, whatever the CloseMode: a fully read stream under
// CloseCut, or one ended by a server error, keeps its backend.
func TestCloseOnEndedStreamKeepsConnection(t *testing.T) {
	for _, mode := range []CloseMode{CloseAuto, CloseCut, CloseDrain} {
		for _, tc := range []struct {
			query string
			want  State
		}{
			{"SELECT g FROM generate_series(1, 1000) g", Complete},
			{errorAfterRows, Failed},
		} {
			t.Run(mode.String()+" "+tc.want.String(), func(t *testing.T) {
				db := openPG(t, DriverName, "jsonstream_close="+mode.String())
				db.SetMaxOpenConns(1)
				before := pidOf(t, db)
				s := mustStream(t)
				rows, err := db.Query(tc.query, s)
				require.NoError(t, err)
				for rows.Next() {
				}
				require.Equal(t, tc.want, s.State(), "rows.Err: %v", rows.Err())
				_ = rows.Close()
				after := pidOf(t, db)
				assert.Equal(t, before, after, "Close of an ended stream ended the connection")
			})
		}
	}
}


// endByCut ends a stream by Cancel or by its pause timeout, both of which
// cut the connection; it returns the error the stream reports.
var endByCut = []struct {
	name string
	end  func(t *testing.T, c Controller)
	want error
}{
	{"Cancel", func(t *testing.T, c Controller) { require.NoError(t, c.Cancel()) }, ErrCanceled},
	{"pause timeout", func(t *testing.T, c Controller) {
		require.NoError(t, c.SetPauseTimeout(50*time.Millisecond))
		require.NoError(t, c.Pause())
		require.Eventually(t, func() bool { return c.State() == Failed }, 5*time.Second, time.Millisecond)
	}, ErrPauseTimeout},
}

// TestCloseAfterCutReturnsNil: the stream already reported why it failed;
// Close must not add the read error of the socket it cut. At the driver
// level, since database/sql drops the error of the Close it makes itself
// after Next fails.
func TestCloseAfterCutReturnsNil(t *testing.T) {
	needRowsTable(t)
	connector, err := (&Driver{inner: pq.Driver{}, settings: defaultSettings()}).OpenConnector(pgtest.DSN(t))
	require.NoError(t, err)
	for _, tc := range endByCut {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dc, err := connector.Connect(ctx)
			require.NoError(t, err)
			defer dc.Close()
			dr, err := dc.(driver.QueryerContext).QueryContext(ctx, bigQuery,
				[]driver.NamedValue{{Ordinal: 1, Value: int64(bigRows)}})
			require.NoError(t, err)
			dest := make([]driver.Value, len(dr.Columns()))
			require.NoError(t, dr.Next(dest))
			tc.end(t, dr.(Controller))
			assert.ErrorIs(t, dr.Next(dest), tc.want)
			assert.NoError(t, dr.Close())
			assert.True(t, dc.(*conn).isCut(), "the connection was not cut")
		})
	}
}

// TestCloseRightAfterCutReturnsNil is TestCloseAfterCutReturnsNil through
// database/sql with no Next in between, where rows.Close returns what the
// driver's Close returns.
func TestCloseRightAfterCutReturnsNil(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "")
	for _, tc := range endByCut {
		t.Run(tc.name, func(t *testing.T) {
			s := mustStream(t)
			rows, err := db.Query(bigQuery, bigRows, s)
			require.NoError(t, err)
			require.True(t, rows.Next())
			tc.end(t, s)
			assert.NoError(t, rows.Close())
			assert.Equal(t, Failed, s.State())
		})
	}
}

func TestCommitAfterFailedStatementReturnsError(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		var out []any
		for _, fail := range []func(tx *sql.Tx) error{
			func(tx *sql.Tx) error { _, err := tx.Exec("SELECT 1/0"); return err },
			func(tx *sql.Tx) error {
				rows, err := tx.Query(errorAfterRows)
				if err != nil {
					return err
				}
				for rows.Next() {
				}
				return rows.Err()
			},
		} {
			tx, err := db.Begin()
			require.NoError(t, err)
			require.Error(t, fail(tx))
			err = tx.Commit()
			require.ErrorIs(t, err, pq.ErrInFailedTransaction)
			out = append(out, err.Error())
		}
		return out
	})
}
