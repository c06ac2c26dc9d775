package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitDSN(t *testing.T) {
	cases := []struct {
		name, in, out string
		opts          int
	}{
		{"no parameters", "host=db port=5432 sslmode=disable", "host=db port=5432 sslmode=disable", 0},
		{"not a pq DSN", "sqlmock_db_0", "sqlmock_db_0", 0},
		{"key=value", "host=db jsonstream_pause_timeout=30s sslmode=disable", "host=db sslmode=disable", 1},
		{"key=value quoted", "password='a b\\'c' jsonstream_close='drain' user=x", "password='a b\\'c' user=x", 1},
		{"key=value spaces around =", "host = db jsonstream_close = cancel", "host = db", 1},
		// lib/pq ends a key or a value at any Unicode space, so does this.
		{"key=value no-break space before", "host=db\u00a0jsonstream_close=drain", "host=db", 1},
		{"key=value no-break space after", "jsonstream_close=drain\u00a0sslmode=disable", "sslmode=disable", 1},
		{"key=value next line between", "host=db\u0085jsonstream_fetch_size=auto\u0085dbname=x", "host=db\u0085dbname=x", 1},
		{"key=value only ours", "jsonstream_close=drain", "", 1},
		{"url", "postgres://u:p@db:5432/x?sslmode=disable&jsonstream_close=drain&application_name=a%20b", "postgres://u:p@db:5432/x?sslmode=disable&application_name=a%20b", 1},
		{"url only ours", "postgresql://db/x?jsonstream_pause_timeout=1m&jsonstream_on_pause_timeout=resume", "postgresql://db/x", 2},
		{"url fragment", "postgres://db/x?jsonstream_drain_timeout=5ms#frag", "postgres://db/x#frag", 1},
		// url.Parse sees a fragment from the '#' of the password on; its
		// writer meant the query, and so does jsonstream.
		{"url password with '#'", "postgres://u:pa#ss@db/x?jsonstream_close=drain&sslmode=disable", "postgres://u:pa#ss@db/x?sslmode=disable", 1},
		// lib/pq unescapes a URL's parameter names, so does jsonstream:
		// this one must not reach the server.
		{"url escaped name", "postgres://u:p@db/x?sslmode=disable&jsonstream%5Fclose=drain", "postgres://u:p@db/x?sslmode=disable", 1},
		{"url escape elsewhere", "postgres://u:p%40w@db/x?application_name=a%20b", "postgres://u:p%40w@db/x?application_name=a%20b", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, opts, err := splitDSN(tc.in)
			require.NoError(t, err)
			assert.Equal(t, tc.out, out)
			assert.Len(t, opts, tc.opts)
		})
	}
}

// TestNewConnectorConfigRuntimeParameters: pq.NewConfig keeps the DSN's
// jsonstream_ parameters in Runtime, for the server; NewConnectorConfig
// takes them as jsonstream's, before its options, and leaves the caller's
// config as it was. A bad one is an error naming it.
func TestNewConnectorConfigRuntimeParameters(t *testing.T) {
	cfg, err := pq.NewConfig("host=db sslmode=disable application_name=x jsonstream_close=drain jsonstream_fetch_size=auto")
	require.NoError(t, err)
	require.Contains(t, cfg.Runtime, "jsonstream_close", "lib/pq no longer keeps them in Runtime: not the case this test is about")
	c, err := NewConnectorConfig(cfg, WithFetchSize(100))
	require.NoError(t, err)
	assert.Equal(t, CloseDrain, c.settings.closeMode)
	assert.Equal(t, 100, c.settings.fetchSize, "the options come after the DSN's parameters")
	assert.Contains(t, cfg.Runtime, "jsonstream_close", "the caller's config changed")
	bad, err := pq.NewConfig("host=db jsonstream_close=maybe")
	require.NoError(t, err)
	_, err = NewConnectorConfig(bad)
	require.ErrorIs(t, err, ErrInvalidOption)
	assert.Contains(t, err.Error(), "jsonstream_close")
}

func TestDSNParametersApply(t *testing.T) {
	_, opts, err := splitDSN("host=db jsonstream_pause_timeout=1m30s jsonstream_on_pause_timeout=resume jsonstream_close=cancel jsonstream_drain_timeout=7ms jsonstream_fetch_size=250")
	require.NoError(t, err)
	s := defaultSettings()
	require.NoError(t, s.apply(opts))
	assert.Equal(t, settings{pauseTimeout: 90 * time.Second, onPauseTimeout: ResumeOnPauseTimeout, closeMode: CloseCut, drainTimeout: 7 * time.Millisecond, fetchSize: 250}, s)

	_, opts, err = splitDSN("postgres://db/x?jsonstream_fetch_size=auto")
	require.NoError(t, err)
	require.NoError(t, s.apply(opts))
	assert.Equal(t, FetchAuto, s.fetchSize)
	_, opts, err = splitDSN("host=db jsonstream_fetch_size=0")
	require.NoError(t, err)
	require.NoError(t, s.apply(opts))
	assert.Equal(t, 0, s.fetchSize, "0 is the single-statement mode")
}

func TestBadDSNParameters(t *testing.T) {
	cases := map[string]string{
		"host=db jsonstream_pause_timeout=-1s":                `jsonstream_pause_timeout="-1s": negative duration`,
		"host=db jsonstream_pause_timeout=ten":                `jsonstream_pause_timeout="ten": not a duration`,
		"host=db jsonstream_pause_timeout=30":                 `jsonstream_pause_timeout="30": not a duration`,
		"host=db jsonstream_close=maybe":                      `jsonstream_close="maybe": want auto, cut or drain`,
		"host=db jsonstream_on_pause_timeout=panic":           `jsonstream_on_pause_timeout="panic": want fail or resume`,
		"host=db jsonstream_drain_timeout=0s":                 `jsonstream_drain_timeout="0s": must be positive`,
		"host=db jsonstream_fetch_size=-5":                    `jsonstream_fetch_size="-5": want 0, a batch size from 1 to 2147483647 (MaxFetchSize), or FetchAuto (DSN: auto)`,
		"host=db jsonstream_fetch_size=lots":                  `jsonstream_fetch_size="lots": want 0, a batch size from 1 to 2147483647`,
		"host=db jsonstream_fetch_size=3000000000":            `jsonstream_fetch_size="3000000000": want 0, a batch size from 1 to 2147483647`,
		"host=db jsonstream_fetch_size=2147483648":            `jsonstream_fetch_size="2147483648": want 0, a batch size from 1 to 2147483647`,
		"host=db jsonstream_colour=blue":                      `unknown DSN parameter jsonstream_colour="blue"`,
		"postgres://db/x?jsonstream_pause_timout=1s":          `unknown DSN parameter jsonstream_pause_timout="1s" (did you mean jsonstream_pause_timeout?)`,
		"host=db jsonstream_fetchsize=auto":                   `unknown DSN parameter jsonstream_fetchsize="auto" (did you mean jsonstream_fetch_size?)`,
		"host=db jsonstream_Close=drain":                      `unknown DSN parameter jsonstream_Close="drain" (did you mean jsonstream_close?)`,
		"postgres://db/x?jsonstream_close=%zz":                `jsonstream_close="%zz": bad URL escape`,
		"host=db jsonstream_close":                            `jsonstream_close has no value`,
		"host=db jsonstream_close='drain":                     `unterminated quoted value`,
		"postgres://db/x?sslmode=disable&jsonstream_close=no": `jsonstream_close="no"`,
	}
	for dsn, want := range cases {
		t.Run(dsn, func(t *testing.T) {
			db, err := sql.Open(DriverName, dsn)
			if err == nil {
				defer db.Close()
			}
			require.Error(t, err, "sql.Open must refuse it")
			assert.ErrorIs(t, err, ErrInvalidOption)
			assert.Contains(t, err.Error(), want)
		})
	}
}

// TestUnknownDSNParameterFarFromAnyName: a name far from every known one
// gets no guess.
func TestUnknownDSNParameterFarFromAnyName(t *testing.T) {
	for _, name := range []string{"jsonstream_colour", "jsonstream_x", "jsonstream_", "jsonstream_retries"} {
		_, err := sql.Open(DriverName, "host=db "+name+"=1")
		require.ErrorIs(t, err, ErrInvalidOption, name)
		assert.Contains(t, err.Error(), "unknown DSN parameter "+name)
		assert.NotContains(t, err.Error(), "did you mean", name)
	}
}

func TestBadOptions(t *testing.T) {
	d := &fakeDriver{newRows: countRows(1)}
	for _, opt := range []Option{
		WithPauseTimeout(-time.Second),
		WithPauseTimeoutAction(PauseTimeoutAction(7)),
		WithCloseMode(CloseMode(9)),
		WithDrainTimeout(0),
		WithFetchSize(-2),
		WithFetchSize(MaxFetchSize + 1),
		WithFetchSize(1 << 40),
		nil,
	} {
		_, err := NewConnector(d, opt)
		assert.ErrorIs(t, err, ErrInvalidOption)
		_, err = NewDriver(d, opt)
		assert.ErrorIs(t, err, ErrInvalidOption)
		_, err = NewStream(opt)
		assert.ErrorIs(t, err, ErrInvalidOption)
		_, err = ContextWithOptions(context.Background(), opt)
		assert.ErrorIs(t, err, ErrInvalidOption)
	}
	for _, n := range []int{MaxFetchSize + 1, 1 << 40} {
		_, err := NewStream(WithFetchSize(n))
		assert.ErrorContains(t, err, "WithFetchSize("+strconv.Itoa(n)+"): want 0, a batch size from 1 to 2147483647 (MaxFetchSize)")
	}
	_, err := NewStream(WithFetchSize(MaxFetchSize))
	assert.NoError(t, err, "the largest count FETCH takes")
	_, err = NewConnector(nil)
	assert.ErrorIs(t, err, ErrInvalidOption)
	_, err = NewDriver(nil)
	assert.Error(t, err)
	assert.Equal(t, "resume", ResumeOnPauseTimeout.String())
	assert.Equal(t, "drain", CloseDrain.String())
	assert.Equal(t, "cut", CloseCut.String())
	assert.Equal(t, "CloseMode(9)", CloseMode(9).String())
}

// TestCloseCutSpellings: the DSN spells CloseCut cut, or cancel, its
// former name, which the deprecated constant CloseCancel keeps in Go.
func TestCloseCutSpellings(t *testing.T) {
	for _, dsn := range []string{"host=db jsonstream_close=cut", "host=db jsonstream_close=cancel"} {
		_, opts, err := splitDSN(dsn)
		require.NoError(t, err, dsn)
		s := defaultSettings()
		require.NoError(t, s.apply(opts))
		assert.Equal(t, CloseCut, s.closeMode, dsn)
	}
	assert.Equal(t, CloseCut, CloseCancel) //nolint:staticcheck // the deprecated name is what this tests
}

// openSQLMock returns a jsonstream DB whose inner driver is go-sqlmock's,
// the way a user tests code that runs on jsonstream.
func openSQLMock(t *testing.T, dsn string) (*sql.DB, sqlmock.Sqlmock) {
	t.Helper()
	mockDB, mock, err := sqlmock.NewWithDSN(dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = mockDB.Close() })
	drv, err := NewDriver(mockDB.Driver())
	require.NoError(t, err)
	connector, err := drv.OpenConnector(dsn)
	require.NoError(t, err)
	db := sql.OpenDB(connector)
	t.Cleanup(func() { _ = db.Close() })
	return db, mock
}

func TestSQLMockInside(t *testing.T) {
	db, mock := openSQLMock(t, "sqlmock_inside")
	mock.ExpectQuery(`SELECT data FROM docs WHERE kind = \$1`).WithArgs("a").
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"n":1}`).AddRow(`{"n":2}`))
	mock.ExpectExec(`DELETE FROM docs`).WillReturnResult(sqlmock.NewResult(0, 2))
	mock.ExpectQuery(`SELECT broken`).WillReturnError(&pq.Error{Code: "42P01", Message: "relation does not exist"})

	s := mustStream(t)
	rows, err := db.Query("SELECT data FROM docs WHERE kind = $1", "a", s)
	require.NoError(t, err)
	require.NoError(t, s.Pause())
	assert.Equal(t, Paused, s.State())
	require.NoError(t, s.Resume())
	var got []string
	for rows.Next() {
		var v string
		require.NoError(t, rows.Scan(&v))
		got = append(got, v)
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, []string{`{"n":1}`, `{"n":2}`}, got)
	assert.Equal(t, Complete, s.State())

	res, err := db.Exec("DELETE FROM docs")
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	assert.Equal(t, int64(2), n)

	_, err = db.Query("SELECT broken")
	pqErr, ok := err.(*pq.Error) //nolint:errorlint // the direct assertion is what drop-in code does
	require.True(t, ok, "got %T", err)
	assert.Equal(t, pqerror.UndefinedTable, pqErr.Code)
	require.NoError(t, mock.ExpectationsWereMet())
}

// openFull opens a DB over a fake driver whose conns have every
// optional interface, each counting its calls, so that a test fails when
// the wrapper drops one; tune sets up the driver.
func openFull(t *testing.T, tune func(*fakeDriver)) (*sql.DB, *fakeDriver) {
	t.Helper()
	d := &fakeDriver{newRows: countRows(2), full: true}
	if tune != nil {
		tune(d)
	}
	c, err := NewConnector(d)
	require.NoError(t, err)
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	return db, d
}

func TestOptionalInterfacesForwarded(t *testing.T) {
	ctx := context.Background()

	t.Run("Pinger", func(t *testing.T) {
		boom := errors.New("ping failed")
		db, d := openFull(t, func(d *fakeDriver) { d.pingErr = boom })
		assert.ErrorIs(t, db.PingContext(ctx), boom)
		assert.Equal(t, 1, d.opened()[0].called("Ping"))
	})
	t.Run("SessionResetter and Validator", func(t *testing.T) {
		db, d := openFull(t, nil)
		db.SetMaxOpenConns(1)
		require.NoError(t, db.PingContext(ctx))
		require.NoError(t, db.PingContext(ctx))
		first := d.opened()[0]
		assert.Positive(t, first.called("ResetSession"))
		assert.Positive(t, first.called("IsValid"))
		first.invalid.Store(true) // the next return to the pool discards it
		require.NoError(t, db.PingContext(ctx))
		require.NoError(t, db.PingContext(ctx))
		assert.Len(t, d.opened(), 2, "an invalid connection must be replaced")
	})
	t.Run("ConnBeginTx", func(t *testing.T) {
		db, d := openFull(t, nil)
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
		assert.Equal(t, driver.TxOptions{Isolation: driver.IsolationLevel(sql.LevelSerializable), ReadOnly: true}, d.opened()[0].txOpts)
	})
	t.Run("QueryerContext ExecerContext ConnPrepareContext", func(t *testing.T) {
		db, d := openFull(t, nil)
		rows, err := db.QueryContext(ctx, "q")
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		_, err = db.ExecContext(ctx, "x")
		require.NoError(t, err)
		st, err := db.PrepareContext(ctx, "q")
		require.NoError(t, err)
		require.NoError(t, st.Close())
		c := d.opened()[0]
		assert.Equal(t, []int{1, 1, 1}, []int{c.called("QueryContext"), c.called("ExecContext"), c.called("PrepareContext")})
	})
	t.Run("NamedValueChecker order as database/sql's", func(t *testing.T) {
		db, d := openFull(t, nil)
		rows, err := db.QueryContext(ctx, "q", celsius(21))
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		assert.Equal(t, "C21", d.opened()[0].args[0].Value, "the conn's checker converted it")

		// A statement with a checker of its own: database/sql asks only the
		// statement's, then falls back to its default conversion. The
		// wrapper must do the same, so compare with the fake unwrapped.
		argsThrough := func(db *sql.DB, d *fakeDriver) []any {
			st, err := db.PrepareContext(ctx, "q ? ?")
			require.NoError(t, err)
			defer st.Close()
			rows, err := st.QueryContext(ctx, fahrenheit(70), celsius(21))
			require.NoError(t, err)
			require.NoError(t, rows.Close())
			args := d.opened()[0].args
			return []any{args[0].Value, args[1].Value}
		}
		pd := &fakeDriver{newRows: countRows(2), full: true}
		plain := sql.OpenDB(pd)
		defer plain.Close()
		want := argsThrough(plain, pd)
		assert.Equal(t, []any{"F70", int64(21)}, want)
		assert.Equal(t, want, argsThrough(db, d))
	})
	t.Run("Conn.Raw reaches the inner conn", func(t *testing.T) {
		db, d := openFull(t, nil)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.Raw(func(dc any) error {
			u, ok := dc.(interface{ Unwrap() driver.Conn })
			require.True(t, ok)
			assert.Same(t, d.opened()[0], u.Unwrap())
			return nil
		}))
	})
	t.Run("Connector.Driver and Close", func(t *testing.T) {
		d := &fakeDriver{}
		c, err := NewConnector(d)
		require.NoError(t, err)
		db := sql.OpenDB(c)
		drv, ok := db.Driver().(*Driver)
		require.True(t, ok, "Driver() must return the wrapper, got %T", db.Driver())
		assert.Same(t, d, drv.Unwrap())
		require.NoError(t, db.Close())
		assert.True(t, d.closed.Load(), "io.Closer must be forwarded")
	})
}

func TestMinimalInnerConnFallbacks(t *testing.T) {
	ctx := context.Background()
	d := &fakeDriver{newRows: countRows(2), minimal: true}
	plain := sql.OpenDB(d)
	defer plain.Close()
	c, err := NewConnector(d)
	require.NoError(t, err)
	wrapped := sql.OpenDB(c)
	defer wrapped.Close()

	for name, db := range map[string]*sql.DB{"plain": plain, "jsonstream": wrapped} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, db.PingContext(ctx))
			rows, err := db.QueryContext(ctx, "q ?", 1) // through Prepare
			require.NoError(t, err)
			n := 0
			for rows.Next() {
				n++
			}
			require.NoError(t, rows.Close())
			assert.Equal(t, 2, n)
			_, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
			assert.EqualError(t, err, "sql: driver does not support non-default isolation level")
			_, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			assert.EqualError(t, err, "sql: driver does not support read-only transactions")
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.NoError(t, tx.Rollback())
		})
	}
	t.Run("a Stream works through the Prepare fallback", func(t *testing.T) {
		s := mustStream(t)
		rows, err := wrapped.QueryContext(ctx, "q ?", 1, s)
		require.NoError(t, err)
		defer rows.Close()
		require.NoError(t, s.Pause())
		assert.Equal(t, Paused, s.State())
	})
	t.Run("column types as database/sql reports them without the interfaces", func(t *testing.T) {
		var cols [2][]*sql.ColumnType
		for i, db := range []*sql.DB{plain, wrapped} {
			rows, err := db.QueryContext(ctx, "q")
			require.NoError(t, err)
			cols[i], err = rows.ColumnTypes()
			require.NoError(t, err)
			assert.False(t, rows.NextResultSet())
			require.NoError(t, rows.Close())
		}
		assert.Equal(t, describeColumns(cols[0]), describeColumns(cols[1]))
	})
}

// describeColumns flattens what ColumnTypes reports, for comparison.
func describeColumns(cols []*sql.ColumnType) []any {
	var out []any
	for _, c := range cols {
		length, lok := c.Length()
		prec, scale, pok := c.DecimalSize()
		nullable, nok := c.Nullable()
		out = append(out, c.Name(), c.DatabaseTypeName(), c.ScanType(), length, lok, prec, scale, pok, nullable, nok)
	}
	return out
}

var _ = reflect.TypeOf
var _ = io.EOF

func TestColumnConverterForwarded(t *testing.T) {
	argsOf := func(connector driver.Connector, d *fakeDriver) any {
		db := sql.OpenDB(connector)
		defer db.Close()
		st, err := db.Prepare("q ?")
		require.NoError(t, err)
		defer st.Close()
		rows, err := st.Query(21)
		require.NoError(t, err)
		require.NoError(t, rows.Close())
		conns := d.opened()
		return conns[len(conns)-1].args[0].Value
	}
	// Conns without a NamedValueChecker whose statements have the
	// deprecated driver.ColumnConverter.
	d := &fakeDriver{newRows: countRows(1), minimal: true, converter: true}
	want := argsOf(d, d)
	require.Equal(t, int64(42), want, "database/sql used the ColumnConverter")
	c, err := NewConnector(d)
	require.NoError(t, err)
	assert.Equal(t, want, argsOf(c, d))
}

func TestErrorsPassThrough(t *testing.T) {
	t.Run("driver.ErrBadConn, with database/sql's retries", func(t *testing.T) {
		var opened [2]int
		for i, wrap := range []bool{false, true} {
			// Its conns fail every statement with driver.ErrBadConn.
			inner := &fakeDriver{before: func(string) error { return driver.ErrBadConn }}
			var c driver.Connector = inner
			if wrap {
				var err error
				c, err = NewConnector(inner)
				require.NoError(t, err)
			}
			db := sql.OpenDB(c)
			_, err := db.Query("q")
			assert.ErrorIs(t, err, driver.ErrBadConn)
			opened[i] = len(inner.opened())
			_ = db.Close()
		}
		assert.Equal(t, opened[0], opened[1], "database/sql retried differently")
	})
	t.Run("io.EOF and inner errors from Next", func(t *testing.T) {
		boom := errors.New("boom")
		fr := &fakeRows{n: 1, err: boom}
		d := &fakeDriver{newRows: func(string) *fakeRows { return fr }}
		conn, err := d.Open("")
		require.NoError(t, err)
		c := newConn(conn, &settings{}, nil)
		dr, err := c.QueryContext(context.Background(), "q", nil)
		require.NoError(t, err)
		dest := make([]driver.Value, 1)
		require.NoError(t, dr.Next(dest))
		assert.Same(t, boom, dr.Next(dest))
		fr2 := &fakeRows{n: 0}
		d.newRows = func(string) *fakeRows { return fr2 }
		dr2, err := c.QueryContext(context.Background(), "q", nil)
		require.NoError(t, err)
		assert.Equal(t, io.EOF, dr2.Next(dest), "io.EOF itself, not a wrapped one")
		assert.Equal(t, Complete, dr2.(Controller).State())
		require.NoError(t, dr2.Close())
	})
	t.Run("Driver.Open reports bad parameters", func(t *testing.T) {
		d, err := NewDriver(&fakeDriver{})
		require.NoError(t, err)
		_, err = d.Open("host=x jsonstream_pause_timeout=soon")
		assert.ErrorIs(t, err, ErrInvalidOption)
		assert.Contains(t, err.Error(), `jsonstream_pause_timeout="soon"`)
	})
}
