package jsonstream

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

const typesQuery = `SELECT 42::int4, 9000000000::int8, 2.5::float8, 'text'::text, 'vc'::varchar(10),
	'{"a": [1, 2]}'::json, '{"b": {"c": null}}'::jsonb, 12345.678::numeric(10,3),
	'2024-02-29 12:34:56.789+02'::timestamptz, '2024-02-29'::date, '\xdeadbeef'::bytea,
	'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, ARRAY[1,2,3]::int[], ARRAY['x','y']::text[],
	NULL::text, true, $1::int + $2::int, $3::text`

func TestDropInValuesAndColumnTypes(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		rows, err := db.Query(typesQuery, 1, 2, "three")
		require.NoError(t, err)
		cols, err := rows.ColumnTypes()
		require.NoError(t, err)
		return []any{scanAll(t, rows), describeColumns(cols)}
	})
}

func TestDropInArrayArguments(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		var a, b pq.Int64Array
		var c pq.StringArray
		var u string
		require.NoError(t, db.QueryRow(`SELECT $1::int8[], $2::int8[], $3::text[], $4::numeric::text`,
			pq.Array([]int64{1, 2}), []int64{3, 4}, []string{"p", "q"}, uint64(1<<63+5)).Scan(&a, &b, &c, &u))
		return []any{a, b, c, u}
	})
}

func TestDropInErrors(t *testing.T) {
	bothSingle(t, func(t *testing.T, db *sql.DB) []any {
		var out []any
		for _, q := range []string{"SELECT 1/0", "SELEC 1", "SELECT * FROM no_such_table"} {
			_, err := db.Exec(q)
			pqErr, ok := err.(*pq.Error) //nolint:errorlint // drop-in code asserts directly
			require.True(t, ok, "%s: got %T %v", q, err, err)
			out = append(out, pqErr.Code, pqErr.Message, pqErr.Severity, pqErr.Position, pqErr.Routine)
			rows, err := db.Query(q)
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				_ = rows.Close()
			}
			pqErr, ok = err.(*pq.Error) //nolint:errorlint
			require.True(t, ok, "%s: got %T %v", q, err, err)
			out = append(out, pqErr.Code)
		}
		return out
	})
}

func TestDropInTransactions(t *testing.T) {
	bothSingle(t, func(t *testing.T, db *sql.DB) []any {
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
		require.NoError(t, err)
		var iso, ro string
		require.NoError(t, tx.QueryRow("SHOW transaction_isolation").Scan(&iso))
		require.NoError(t, tx.QueryRow("SHOW transaction_read_only").Scan(&ro))
		_, err = tx.Exec("CREATE TEMP TABLE t_ro (a int)")
		pqErr, _ := err.(*pq.Error) //nolint:errorlint
		require.NotNil(t, pqErr, "%v", err)
		require.NoError(t, tx.Rollback())

		tx, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
		require.NoError(t, err)
		var iso2 string
		require.NoError(t, tx.QueryRow("SHOW transaction_isolation").Scan(&iso2))
		require.NoError(t, tx.Commit())
		return []any{iso, ro, pqErr.Code, iso2}
	})
}

func TestDropInPreparedReuseAndCopyIn(t *testing.T) {
	table := fmt.Sprintf("copy_test_%d", time.Now().UnixNano())
	both(t, func(t *testing.T, db *sql.DB) []any {
		st, err := db.Prepare("SELECT $1::int * 2")
		require.NoError(t, err)
		var sum int
		for i := 0; i < 20; i++ {
			var v int
			require.NoError(t, st.QueryRow(i).Scan(&v))
			sum += v
		}
		require.NoError(t, st.Close())

		_, err = db.Exec("DROP TABLE IF EXISTS " + table)
		require.NoError(t, err)
		_, err = db.Exec("CREATE TABLE " + table + " (id int, doc jsonb)")
		require.NoError(t, err)
		defer db.Exec("DROP TABLE " + table) //nolint:errcheck
		tx, err := db.Begin()
		require.NoError(t, err)
		cp, err := tx.Prepare(pq.CopyIn(table, "id", "doc")) //nolint:staticcheck // pq.CopyIn must keep working
		require.NoError(t, err)
		for i := 0; i < 1000; i++ {
			_, err = cp.Exec(i, fmt.Sprintf(`{"n": %d}`, i))
			require.NoError(t, err)
		}
		_, err = cp.Exec()
		require.NoError(t, err)
		require.NoError(t, cp.Close())
		require.NoError(t, tx.Commit())
		var n, total int
		require.NoError(t, db.QueryRow("SELECT count(*), sum((doc->>'n')::int) FROM "+table).Scan(&n, &total))
		return []any{sum, n, total}
	})
}

func TestDropInMultipleResultSetsAndLargeValue(t *testing.T) {
	bothSingle(t, func(t *testing.T, db *sql.DB) []any {
		rows, err := db.Query("SELECT 1; SELECT 'two', 3")
		require.NoError(t, err)
		var sets [][][]any
		for {
			sets = append(sets, scanAllOpen(t, rows))
			if !rows.NextResultSet() {
				break
			}
		}
		require.NoError(t, rows.Close())

		big := strings.Repeat("x", 4<<20)
		var back []byte
		require.NoError(t, db.QueryRow("SELECT $1::bytea", []byte(big)).Scan(&back))
		var n int
		require.NoError(t, db.QueryRow("SELECT length(repeat('y', 4194304))").Scan(&n))
		return []any{sets, len(back), string(back) == big, n}
	})
}

func TestDropInLargeStreamChecksum(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		rows, err := db.Query(`SELECT g, jsonb_build_object('id', g, 'name', 'name-' || g) FROM generate_series(1, 200000) g`)
		require.NoError(t, err)
		defer rows.Close()
		h := fnv.New64a()
		n := 0
		for rows.Next() {
			var id int
			var doc []byte
			require.NoError(t, rows.Scan(&id, &doc))
			_, _ = fmt.Fprintf(h, "%d:%s\n", id, doc) // a hash.Hash never fails to write
			n++
		}
		require.NoError(t, rows.Err())
		return []any{n, h.Sum64()}
	})
}

func TestDropInConcurrentQueries(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		var wg sync.WaitGroup
		sums := make([]int, 16)
		errs := make([]error, 16)
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				errs[g] = db.QueryRow("SELECT sum(x) FROM generate_series(1, $1::int) x", 1000*(g+1)).Scan(&sums[g])
			}(g)
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		return []any{sums}
	})
}

func TestDropInContextCancellation(t *testing.T) {
	both(t, func(t *testing.T, db *sql.DB) []any {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, errBefore := db.QueryContext(ctx, "SELECT 1")

		// A cancel request that reaches the server before the statement
		// runs is dropped (lib/pq's as well as anyone's): the deadline
		// leaves a loaded machine a second to start it.
		ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, errDuring := db.ExecContext(ctx, "SELECT pg_sleep(10)")
		took := time.Since(start)
		require.Error(t, errDuring)
		canceled := errors.Is(errDuring, context.DeadlineExceeded)
		if pqErr, ok := errDuring.(*pq.Error); ok { //nolint:errorlint
			canceled = pqErr.Code == "57014"
		}
		var one int
		require.NoError(t, db.QueryRow("SELECT 1").Scan(&one), "the pool recovers")
		return []any{errBefore, canceled, took < 5*time.Second, one}
	})
}

func TestDropInBadDSNs(t *testing.T) {
	for _, dsn := range []string{
		"host=127.0.0.1 port=1 sslmode=disable connect_timeout=2",
		"postgres://127.0.0.1:1/x?sslmode=disable",
		"host=127.0.0.1 port=notanumber",
		"postgres://%zz",
		"host='unterminated",
	} {
		t.Run(dsn, func(t *testing.T) {
			var msgs []string
			for _, name := range []string{"postgres", DriverName} {
				db, err := sql.Open(name, dsn)
				require.NoError(t, err, "sql.Open only records the DSN")
				err = db.Ping()
				require.Error(t, err)
				msgs = append(msgs, err.Error())
				_ = db.Close()
			}
			assert.Equal(t, msgs[0], msgs[1])
		})
	}
}

func TestWrapsPQConnectors(t *testing.T) {
	needRowsTable(t)
	dsn := pgtest.DSN(t)
	monitor := openPG(t, "postgres", "")

	t.Run("NewConnectorConfig", func(t *testing.T) {
		cfg, err := pq.NewConfig(dsn)
		require.NoError(t, err)
		base, err := pq.NewConnectorConfig(cfg)
		require.NoError(t, err)
		c, err := NewConnector(base) // installs the dialer on a bare *pq.Connector
		require.NoError(t, err)
		db := sql.OpenDB(c)
		defer db.Close()
		earlyCloseStops(t, db, monitor)
	})
	t.Run("ConnectorWithNoticeHandler", func(t *testing.T) {
		base, err := pq.NewConnector(dsn)
		require.NoError(t, err)
		base.Dialer(NewDialer(nil))
		var mu sync.Mutex
		var notices []string
		c, err := NewConnector(pq.ConnectorWithNoticeHandler(base, func(n *pq.Error) {
			mu.Lock()
			notices = append(notices, n.Message)
			mu.Unlock()
		}))
		require.NoError(t, err)
		db := sql.OpenDB(c)
		defer db.Close()
		_, err = db.Exec(`DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$`)
		require.NoError(t, err)
		mu.Lock()
		assert.Equal(t, []string{"hello from the server"}, notices)
		mu.Unlock()
		earlyCloseStops(t, db, monitor)
	})
}

// earlyCloseStops closes a large stream after one row and requires the
// server to stop the query.
func earlyCloseStops(t *testing.T, db *sql.DB, monitor *sql.DB) {
	t.Helper()
	conn, pid := backend(t, db)
	rows, err := conn.QueryContext(context.Background(), bigQuery, bigRows)
	require.NoError(t, err)
	require.True(t, rows.Next())
	start := time.Now()
	require.NoError(t, rows.Close())
	assert.Less(t, time.Since(start), closeBound)
	requireBackendStops(t, monitor, pid)
}

// TestDSNForms: every form of DSN lib/pq takes works the same through
// jsonstream, jsonstream's own parameters removed from it.
func TestDSNForms(t *testing.T) {
	srv := pgtest.Shared(t)
	port := fmt.Sprint(srv.Port())
	forms := map[string]string{
		"url":              srv.URL(),
		"url with ours":    srv.URL() + "&jsonstream_pause_timeout=1m&application_name=forms",
		"key=value":        srv.DSN(),
		"key=value quoted": "host='127.0.0.1' port=" + port + " user=postgres dbname=postgres sslmode=disable jsonstream_close='drain'",
		"environment":      "jsonstream_close=auto",
	}
	for name, dsn := range forms {
		t.Run(name, func(t *testing.T) {
			if name == "environment" {
				t.Setenv("PGHOST", "127.0.0.1")
				t.Setenv("PGPORT", port)
				t.Setenv("PGUSER", "postgres")
				t.Setenv("PGDATABASE", "postgres")
				t.Setenv("PGSSLMODE", "disable")
			}
			plain, _, err := splitDSN(dsn) // lib/pq would send jsonstream's parameters to the server
			require.NoError(t, err)
			for driverName, dsn := range map[string]string{"postgres": plain, DriverName: dsn} {
				db, err := sql.Open(driverName, dsn)
				require.NoError(t, err)
				var user string
				require.NoError(t, db.QueryRow("SELECT current_user").Scan(&user), driverName)
				assert.Equal(t, "postgres", user)
				require.NoError(t, db.Close())
			}
		})
	}
}

// TestNotificationsWhileIdle: notifications that arrive while the
// connection is idle reach lib/pq's handler exactly once each and in
// order, as through lib/pq alone, though the socket holds what a read
// brings past a ReadyForQuery (frame.go).
func TestNotificationsWhileIdle(t *testing.T) {
	dsn := pgtest.DSN(t)
	notifier := openPG(t, "postgres", "")
	run := func(t *testing.T, throughJsonstream bool) []string {
		base, err := pq.NewConnector(dsn)
		require.NoError(t, err)
		var mu sync.Mutex
		var got []string
		var c driver.Connector = pq.ConnectorWithNotificationHandler(base, func(n *pq.Notification) {
			mu.Lock()
			got = append(got, n.Extra)
			mu.Unlock()
		})
		if throughJsonstream {
			base.Dialer(NewDialer(nil))
			c, err = NewConnector(c)
			require.NoError(t, err)
		}
		db := sql.OpenDB(c)
		defer db.Close()
		db.SetMaxOpenConns(1)
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(ctx, "LISTEN jsonstream_idle")
		require.NoError(t, err)
		for i := range 5 {
			_, err := notifier.Exec("SELECT pg_notify('jsonstream_idle', $1)", strconv.Itoa(i))
			require.NoError(t, err)
		}
		// The notifications reach the idle connection; each query reads
		// what arrived.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var one int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&one))
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n >= 5 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		return got
	}
	want := run(t, false)
	require.Equal(t, []string{"0", "1", "2", "3", "4"}, want)
	got := run(t, true)
	assert.Equal(t, want, got)
}

// TestCopyInWhileServerSpeaks: lib/pq's COPY FROM reads the server's
// answers on a goroutine of its own while the caller's goroutine writes
// the rows; a trigger's NOTICE makes the server speak mid-COPY. The
// framer's state is shared by the two (the race detector checks it), and
// the rows arrive as through lib/pq.
func TestCopyInWhileServerSpeaks(t *testing.T) {
	bothSingle(t, func(t *testing.T, db *sql.DB) int {
		table := fmt.Sprintf("copy_notice_%d", time.Now().UnixNano())
		_, err := db.Exec(`CREATE TABLE ` + table + ` (id int);
CREATE FUNCTION ` + table + `_f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE 'row %', NEW.id; RETURN NEW; END$$;
CREATE TRIGGER t BEFORE INSERT ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION ` + table + `_f()`)
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = db.Exec("DROP TABLE " + table + "; DROP FUNCTION " + table + "_f()") })
		tx, err := db.Begin()
		require.NoError(t, err)
		cp, err := tx.Prepare(pq.CopyIn(table, "id")) //nolint:staticcheck // lib/pq's COPY FROM, as its users call it
		require.NoError(t, err)
		for i := range 5000 {
			_, err = cp.Exec(i)
			require.NoError(t, err)
		}
		_, err = cp.Exec()
		require.NoError(t, err)
		require.NoError(t, cp.Close())
		require.NoError(t, tx.Commit())
		var n int
		require.NoError(t, db.QueryRow("SELECT count(*) FROM "+table).Scan(&n))
		return n
	})
}
