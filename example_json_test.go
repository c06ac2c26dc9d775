package jsonstream_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/jsonstream/jsonstream"
)

// exampleDB stands in for a PostgreSQL database: its one query returns a
// jsonb column "data" holding docs.
func exampleDB(docs ...string) *sql.DB {
	db, mock, err := sqlmock.New()
	if err != nil {
		log.Fatal(err)
	}
	rows := sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("data").OfType("JSONB", nil))
	for _, d := range docs {
		rows.AddRow([]byte(d))
	}
	mock.ExpectQuery("SELECT data FROM orders").WillReturnRows(rows)
	return db
}

type Order struct {
	ID    int      `json:"id"`
	Items []string `json:"items"`
}

func ExampleEach() {
	db := exampleDB(`{"id":1,"items":["tea"]}`, `{"id":2,"items":["milk","bread"]}`)
	defer db.Close()

	rows, err := db.Query("SELECT data FROM orders")
	if err != nil {
		log.Fatal(err)
	}
	// Each closes rows, also on break or error.
	for order, err := range jsonstream.Each[Order](rows) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(order.ID, order.Items)
	}
	// Output:
	// 1 [tea]
	// 2 [milk bread]
}

func ExampleForEach() {
	db := exampleDB(`{"id":1,"items":["tea"]}`, `{"id":2,"items":`)
	defer db.Close()

	rows, err := db.Query("SELECT data FROM orders")
	if err != nil {
		log.Fatal(err)
	}
	err = jsonstream.ForEach(rows, func(o Order) error {
		fmt.Println("order", o.ID)
		return nil
	})
	var docErr *jsonstream.DocumentError
	if errors.As(err, &docErr) {
		fmt.Printf("row %d is bad: %q\n", docErr.Row, docErr.Excerpt)
	}
	// Output:
	// order 1
	// row 2 is bad: "{\"id\":2,\"items\":"
}

func ExampleWriteNDJSON() {
	db := exampleDB(`{"id": 1, "items": ["tea"]}`, `{"id": 2, "items": []}`)
	defer db.Close()

	ctx := context.Background()
	rows, err := db.QueryContext(ctx, "SELECT data FROM orders")
	if err != nil {
		log.Fatal(err)
	}
	n, err := jsonstream.WriteNDJSON(ctx, os.Stdout, rows)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n, "documents")
	// Output:
	// {"id": 1, "items": ["tea"]}
	// {"id": 2, "items": []}
	// 2 documents
}

// An HTTP handler that streams a query to the client. A slow client slows
// the query down, since nothing more is read while a write blocks; a client
// that goes away cancels the request's context, which stops the query and
// frees its connection.
func ExampleWriteNDJSON_httpHandler() {
	db, err := sql.Open("jsonstream", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("GET /orders", func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.QueryContext(r.Context(), "SELECT data FROM orders ORDER BY id")
		if err != nil {
			http.Error(w, "query failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		n, err := jsonstream.WriteNDJSON(r.Context(), w, rows, jsonstream.WithWriteTimeout(time.Minute))
		switch {
		case err == nil:
		case errors.Is(err, jsonstream.ErrClientGone), errors.Is(err, context.Canceled):
			// The client went away, or stopped reading for a minute.
			log.Printf("GET /orders: client left after %d documents", n)
		case n == 0:
			// Nothing was written yet: the status can still say so.
			http.Error(w, "bad data", http.StatusInternalServerError)
		default:
			// The client sees the trailer "Jsonstream-Status: failed".
			log.Printf("GET /orders: %d documents sent: %v", n, err)
		}
	})
	server := &http.Server{Addr: ":8080"}
	log.Fatal(server.ListenAndServe())
}

// The trailer tells a client whether the response it read was whole: here
// the second document is NULL, so the writing stops after the first.
func ExampleTrailerStatus() {
	db, mock, err := sqlmock.New()
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	mock.ExpectQuery("SELECT data FROM orders").WillReturnRows(
		sqlmock.NewRowsWithColumnDefinition(sqlmock.NewColumn("data").OfType("JSONB", nil)).
			AddRow([]byte(`{"id":1,"items":["tea"]}`)).
			AddRow(nil)) // a NULL document
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.QueryContext(r.Context(), "SELECT data FROM orders")
		if err != nil {
			http.Error(w, "query failed", http.StatusInternalServerError)
			return
		}
		_, _ = jsonstream.WriteNDJSON(r.Context(), w, rows, jsonstream.WithFlushEvery(1))
	}))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s", body)
	fmt.Println(jsonstream.TrailerStatus+":", resp.Trailer.Get(jsonstream.TrailerStatus))
	// Output:
	// {"id":1,"items":["tea"]}
	// Jsonstream-Status: failed
}
