package jsonstream_test

import (
	"fmt"
	"log"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/jsonstream/jsonstream"
)

// An Observer hears of each stream's life; here it prints it. Set it on a
// connector (NewConnector or NewDriver with WithObserver) for every
// query, or on one Stream as here. Metrics and traces come from the
// github.com/jsonstream/jsonstream/jsonstreamotel module, an Observer too.
func ExampleWithObserver() {
	db, mock := mockDB("example_with_observer")
	defer db.Close()
	mock.ExpectQuery("SELECT data FROM documents").WithArgs(10).
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"id":1}`).AddRow(`{"id":2}`))

	observer := jsonstream.ObserverFunc(func(e jsonstream.Event) {
		switch e.Kind {
		case jsonstream.EventStarted:
			fmt.Printf("started: %q (the text only with WithObserverQueryText)\n", e.Query)
		case jsonstream.EventPaused:
			fmt.Printf("paused after %d rows\n", e.Stats.Rows)
		case jsonstream.EventResumed:
			fmt.Println("resumed; paused for more than 0s:", e.Paused > 0)
		case jsonstream.EventEnded:
			fmt.Printf("ended %s: %d rows, %d bytes, %d pauses, connection cut: %t, error: %v\n",
				e.Outcome, e.Stats.Rows, e.Stats.Bytes, e.Stats.Pauses, e.ConnCut, e.Err)
		default:
			fmt.Println(e.Kind)
		}
	})
	stream, err := jsonstream.NewStream(jsonstream.WithObserver(observer))
	if err != nil {
		log.Fatal(err)
	}
	rows, err := db.Query("SELECT data FROM documents WHERE kind = $1", 10, stream)
	if err != nil {
		log.Fatal(err)
	}
	for rows.Next() {
		// Pause and Resume come from any goroutine; here, from the reader.
		_ = stream.Pause()
		_ = stream.Resume()
	}
	if err := rows.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// started: "" (the text only with WithObserverQueryText)
	// first_row
	// paused after 1 rows
	// resumed; paused for more than 0s: true
	// paused after 2 rows
	// resumed; paused for more than 0s: true
	// ended complete: 2 rows, 16 bytes, 2 pauses, connection cut: false, error: <nil>
}
