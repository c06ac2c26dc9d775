package jsonstream_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	"github.com/jsonstream/jsonstream"
)

// Pin how queries read their rows, for a pool in the DSN or for one query
// on its Stream. The default runs reads as portal streams on connections
// opened this way; a query that the pinned portal mode cannot run fails
// before anything is sent, here one that would run two statements.
func ExampleWithStreamMode() {
	db, err := sql.Open("jsonstream", "host=db.internal dbname=app jsonstream_mode=portal")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// For one query: the single-statement mode, whatever the pool's.
	single, err := jsonstream.NewStream(jsonstream.WithStreamMode(jsonstream.ModeSingle))
	if err != nil {
		log.Fatal(err)
	}
	_ = single // db.QueryContext(ctx, query, single)

	// On a connection of another driver (here go-sqlmock's) jsonstream does
	// not own the wire: the pinned portal mode says so.
	mocked, _ := mockDB("example_stream_mode")
	defer mocked.Close()
	portal, err := jsonstream.NewStream(jsonstream.WithStreamMode(jsonstream.ModePortal))
	if err != nil {
		log.Fatal(err)
	}
	_, err = mocked.QueryContext(context.Background(), "SELECT 1", portal)
	fmt.Println(errors.Is(err, jsonstream.ErrPortalQuery))
	// Output: true
}
