package jsonstream_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/lib/pq"

	"github.com/jsonstream/jsonstream"
)

// The drop-in: change the driver name, keep the DSN and the code.
func Example() {
	db, err := sql.Open("jsonstream", "postgres://app@db.internal/app?sslmode=verify-full")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	rows, err := db.QueryContext(context.Background(), "SELECT data FROM documents")
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(doc))
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
}

// mockDB returns a jsonstream DB over go-sqlmock, so the examples run
// without a server; with a real one, sql.Open("jsonstream", dsn) is all it
// takes. Closing the returned DB closes the mock's too.
func mockDB(dsn string) (*mockedDB, sqlmock.Sqlmock) {
	inner, mock, err := sqlmock.NewWithDSN(dsn)
	if err != nil {
		log.Fatal(err)
	}
	drv, err := jsonstream.NewDriver(inner.Driver())
	if err != nil {
		log.Fatal(err)
	}
	connector, err := drv.OpenConnector(dsn)
	if err != nil {
		log.Fatal(err)
	}
	return &mockedDB{DB: sql.OpenDB(connector), inner: inner}, mock
}

type mockedDB struct {
	*sql.DB
	inner *sql.DB
}

func (m *mockedDB) Close() error {
	return errors.Join(m.DB.Close(), m.inner.Close())
}

// Pause and resume a stream from another goroutine: pass a Stream as one
// more query argument; it takes no placeholder.
func ExampleNewStream() {
	db, mock := mockDB("example_new_stream")
	defer db.Close()
	mock.ExpectQuery("SELECT data FROM documents").
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"id":1}`).AddRow(`{"id":2}`))

	stream, err := jsonstream.NewStream(jsonstream.WithPauseTimeout(30 * time.Second))
	if err != nil {
		log.Fatal(err)
	}
	rows, err := db.QueryContext(context.Background(), "SELECT data FROM documents", stream)
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()

	// Backpressure, from any goroutine: while paused, Next waits and
	// nothing more is read from the server.
	if err := stream.Pause(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", stream.State())
	time.AfterFunc(10*time.Millisecond, func() { _ = stream.Resume() })

	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			log.Fatal(err)
		}
		fmt.Println(doc)
	}
	if err := rows.Err(); err != nil {
		log.Fatal(err)
	}
	st := stream.Stats()
	fmt.Println("state:", st.State, "rows:", st.Rows, "pauses:", st.Pauses)
	// Output:
	// state: paused
	// {"id":1}
	// {"id":2}
	// state: complete rows: 2 pauses: 1
}

// A forgotten pause ends the stream with ErrPauseTimeout instead of
// holding a connection and a server snapshot forever.
func ExampleWithPauseTimeout() {
	db, mock := mockDB("example_pause_timeout")
	defer db.Close()
	mock.ExpectQuery("SELECT data FROM documents").
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"id":1}`))

	stream, err := jsonstream.NewStream(jsonstream.WithPauseTimeout(20 * time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	rows, err := db.Query("SELECT data FROM documents", stream)
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	_ = stream.Pause() // and nobody resumes
	for rows.Next() {
	}
	fmt.Println(errors.Is(rows.Err(), jsonstream.ErrPauseTimeout), stream.State())
	// Output: true failed
}

// Settings for every stream of a DB go in the DSN, under the jsonstream_
// prefix; lib/pq never sees them.
func ExampleDSNPrefix() {
	db, err := sql.Open("jsonstream", "host=db.internal dbname=app jsonstream_pause_timeout=30s jsonstream_close=auto")
	if err != nil {
		log.Fatal(err) // a bad jsonstream_ parameter is reported here
	}
	defer db.Close()
	_, err = sql.Open("jsonstream", "host=db.internal jsonstream_pause_timeout=-1s")
	fmt.Println(err)
	// Output: jsonstream: invalid option: DSN parameter jsonstream_pause_timeout="-1s": negative duration
}

// Wrap a lib/pq connector, here one with a notice handler, for use with
// sql.OpenDB. Install jsonstream's dialer on the *pq.Connector so early
// Close, Cancel and the pause timeout can stop the server-side query.
func ExampleNewConnector() {
	base, err := pq.NewConnector("host=db.internal dbname=app")
	if err != nil {
		log.Fatal(err)
	}
	base.Dialer(jsonstream.NewDialer(nil))
	withNotices := pq.ConnectorWithNoticeHandler(base, func(n *pq.Error) { log.Println(n.Message) })

	connector, err := jsonstream.NewConnector(withNotices, jsonstream.WithPauseTimeout(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
}

// Build lib/pq's settings yourself (pq.NewConfig, or a pq.Config by hand)
// and hand them to NewConnectorConfig: jsonstream's dialer then
// negotiates TLS as lib/pq would for them, and follows the protocol's
// messages on the encrypted connection.
func ExampleNewConnectorConfig() {
	cfg, err := pq.NewConfig("host=db.internal dbname=app sslmode=verify-full sslrootcert=system")
	if err != nil {
		log.Fatal(err)
	}
	cfg.ApplicationName = "exporter"
	connector, err := jsonstream.NewConnectorConfig(cfg, jsonstream.WithPauseTimeout(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
}

// Code that holds a driver.Rows reaches the same controls with a type
// assertion.
func ExampleController() {
	var dr driver.Rows // from a jsonstream connection
	if c, ok := dr.(jsonstream.Controller); ok {
		_ = c.Pause()
		defer c.Resume() //nolint:errcheck
	}
}

// Stop early and fast: Close cuts the connection instead of reading the
// whole rest of the result, and the server stops the query.
func ExampleCloseMode() {
	db, err := sql.Open("jsonstream", "host=db.internal dbname=app jsonstream_close=auto")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT data FROM events ORDER BY id")
	if err != nil {
		log.Fatal(err)
	}
	if !rows.Next() {
		log.Fatal("no events")
	}
	// The first row is all we wanted.
	_ = rows.Close() // milliseconds, whatever is left
}

// A stream that survives a failover, a restart or a recovery conflict on a
// standby: resumed from the last id it delivered, on a new connection if
// need be, without a row twice or one lost.
func ExampleWithResumeKey() {
	export := func(ctx context.Context, db *sql.DB) (jsonstream.Stats, error) {
		s, err := jsonstream.NewStream(jsonstream.WithResumeKey(jsonstream.Asc("id")))
		if err != nil {
			return jsonstream.Stats{}, err
		}
		rows, err := db.QueryContext(ctx, "SELECT id, doc FROM documents ORDER BY id", s)
		if err != nil {
			return jsonstream.Stats{}, err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			var doc []byte
			if err := rows.Scan(&id, &doc); err != nil {
				return s.Stats(), err
			}
			// write doc out
		}
		return s.Stats(), rows.Err() // Stats.Resumes counts the continuations
	}
	_ = export

	_, err := jsonstream.NewStream(jsonstream.WithResumeKey())
	fmt.Println(errors.Is(err, jsonstream.ErrInvalidOption))
	// Output: true
}

// A resumable export that lets its server-side query go when its reader
// stalls for more than a minute, so that VACUUM and a standby's replay
// never wait on it, and goes on from its last id when the reader is back.
func ExampleWithResumeAfterPause() {
	s, err := jsonstream.NewStream(
		jsonstream.WithResumeKey(jsonstream.Asc("id")),
		jsonstream.WithResumeAfterPause(time.Minute),
	)
	fmt.Println(err == nil, s.State())
	// Output: true not_started
}
