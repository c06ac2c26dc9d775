package jsonstream_test

import (
	"context"
	"fmt"
	"log"
	"regexp"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/jsonstream/jsonstream"
)

// A cursor-backed stream: the query runs as a cursor fetched in batches,
// and closing it early closes the cursor instead of the connection. The
// mock shows the statements jsonstream sends; against PostgreSQL the DSN
// parameter jsonstream_fetch_size=auto does the same for every query.
func ExampleWithFetchSize() {
	db, mock := mockDB("example_fetch_size")
	defer db.Close()
	mock.ExpectExec(regexp.QuoteMeta("BEGIN; DECLARE jsonstream_cursor_1 NO SCROLL CURSOR FOR (\nSELECT data FROM documents\n)")).
		WillReturnResult(sqlmock.NewResult(0, 0))
	mock.ExpectQuery("FETCH FORWARD 2 FROM jsonstream_cursor_1").
		WillReturnRows(sqlmock.NewRows([]string{"data"}).AddRow(`{"id":1}`).AddRow(`{"id":2}`))
	mock.ExpectExec("ROLLBACK").WillReturnResult(sqlmock.NewResult(0, 0))

	stream, err := jsonstream.NewStream(jsonstream.WithFetchSize(2))
	if err != nil {
		log.Fatal(err)
	}
	rows, err := db.QueryContext(context.Background(), "SELECT data FROM documents", stream)
	if err != nil {
		log.Fatal(err)
	}
	rows.Next()
	var doc string
	if err := rows.Scan(&doc); err != nil {
		log.Fatal(err)
	}
	fmt.Println(doc)
	// Early: the rest of the batch is read off, the cursor's transaction
	// rolled back, and the connection stays in the pool.
	if err := rows.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", stream.State(), "statements as expected:", mock.ExpectationsWereMet() == nil)
	// Output:
	// {"id":1}
	// state: closed statements as expected: true
}
