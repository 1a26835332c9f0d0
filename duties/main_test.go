package duties_test

import (
	"testing"

	"github.com/stickyvol/stickyvol/internal/fixtures"
)

func TestMain(m *testing.M) { fixtures.MainWithoutWatchList(m) }
