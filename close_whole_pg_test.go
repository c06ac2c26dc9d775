package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// closeModesDSN are the DSN forms of every close mode.
var closeModesDSN = []string{"jsonstream_close=auto", "jsonstream_close=cut", "jsonstream_close=drain"}

// TestQueryRowIsComplete: a result received whole is Complete however it
// was closed. QueryRow reads one row and closes the rows without reading
// to the end; the rest of its result is only the server's end of it, so
// its stream ends Complete with OutcomeComplete, in every stream mode and
// close mode, and the connection serves the next query (CloseCut
// included: nothing was left to cut).
func TestQueryRowIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		for _, closeMode := range closeModesDSN {
			t.Run("mode="+mode+"/"+closeMode, func(t *testing.T) {
				db := openPG(t, DriverName, mode+" "+closeMode)
				db.SetMaxOpenConns(1)
				before := pidOf(t, db)
				for _, query := range []string{
					"SELECT 1",
					"SELECT g FROM generate_series(1, 1) g",
					"SELECT repeat('x', 100000)", // a row larger than one read
				} {
					rec := &recorder{}
					s := mustStream(t, WithObserver(rec))
					var v string
					require.NoError(t, db.QueryRow(query, s).Scan(&v))
					assert.Equal(t, Complete, s.State(), "%s", query)
					end := rec.ended(t)
					assert.Equal(t, OutcomeComplete, end.Outcome, "%s", query)
					assert.False(t, end.ConnCut, "%s", query)
					assert.Equal(t, before, pidOf(t, db), "%s: the connection was cut", query)
				}
				sessionClean(t, db)
			})
		}
	}
}

// TestCloseAfterTheLastRowIsComplete: a consumer that reads every row it
// wants, the last one included, and closes without asking for more, has
// received the whole result: Complete. One row left unread makes it an
// early Close: Closed, with the outcome of the mode.
func TestCloseAfterTheLastRowIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			db.SetMaxOpenConns(1)
			for _, tc := range []struct {
				read  int
				state State
			}{
				{read: 3, state: Complete},
				{read: 2, state: Closed},
				{read: 0, state: Closed},
			} {
				rec := &recorder{}
				s := mustStream(t, WithObserver(rec))
				rows, err := db.Query("SELECT g FROM generate_series(1, 3) g", s)
				require.NoError(t, err)
				for i := 0; i < tc.read; i++ {
					require.True(t, rows.Next())
				}
				require.NoError(t, rows.Close())
				assert.Equal(t, tc.state, s.State(), "read %d of 3", tc.read)
				end := rec.ended(t)
				if tc.state == Complete {
					assert.Equal(t, OutcomeComplete, end.Outcome)
				} else {
					assert.NotEqual(t, OutcomeComplete, end.Outcome, "read %d of 3", tc.read)
				}
			}
		})
	}
}

// TestCloseOfEmptyResultIsComplete: an empty result closed without a
// single Next was received whole.
func TestCloseOfEmptyResultIsComplete(t *testing.T) {
	for _, mode := range streamModes {
		t.Run("mode="+mode, func(t *testing.T) {
			db := openPG(t, DriverName, mode)
			s := mustStream(t)
			rows, err := db.Query("SELECT 1 WHERE false", s)
			require.NoError(t, err)
			require.NoError(t, rows.Close())
			assert.Equal(t, Complete, s.State())
		})
	}
}

// TestCloseWithNextResultSetIsNotComplete: a multi-statement query whose
// first result set was read to its last row still has a result set to
// come: its Close is an early one.
func TestCloseWithNextResultSetIsNotComplete(t *testing.T) {
	db := openPG(t, DriverName, "jsonstream_close=drain")
	s := mustStream(t)
	rows, err := db.Query("SELECT 1; SELECT 2", s)
	require.NoError(t, err)
	require.True(t, rows.Next())
	require.NoError(t, rows.Close())
	assert.Equal(t, Closed, s.State())
}

// TestConnCutErrorSaysWhy: a sql.Conn whose connection a stream cut (an
// early Close under CloseCut) answers its next statement, whatever it
// is, with ErrConnCut, which wraps driver.ErrBadConn, before sending
// anything; database/sql then discards the connection, and the pool
// serves the next query on a new one.
func TestConnCutErrorSaysWhy(t *testing.T) {
	needRowsTable(t)
	db := openPG(t, DriverName, "jsonstream_close=cut")
	ctx := context.Background()
	for name, use := range map[string]func(*sql.Conn) error{
		"Query": func(c *sql.Conn) error {
			var one int
			return c.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		},
		"Exec": func(c *sql.Conn) error {
			_, err := c.ExecContext(ctx, "SELECT 1")
			return err
		},
		"BeginTx": func(c *sql.Conn) error {
			_, err := c.BeginTx(ctx, nil)
			return err
		},
		"Prepare": func(c *sql.Conn) error {
			_, err := c.PrepareContext(ctx, "SELECT 1")
			return err
		},
		"Ping": func(c *sql.Conn) error { return c.PingContext(ctx) },
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			rows, err := conn.QueryContext(ctx, bigQuery, bigRows)
			require.NoError(t, err)
			require.True(t, rows.Next())
			require.NoError(t, rows.Close())

			err = use(conn)
			require.ErrorIs(t, err, ErrConnCut)
			assert.ErrorIs(t, err, driver.ErrBadConn)
			assert.Contains(t, err.Error(), "cut to end a stream")
			assert.ErrorIs(t, conn.Close(), sql.ErrConnDone, "database/sql kept the connection")
			var one int
			require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool serves the next query")
		})
	}
}
