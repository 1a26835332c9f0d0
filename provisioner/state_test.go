package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
)

func TestProvisioningState(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want controller.ProvisioningState
	}{
		{status.Error(codes.ResourceExhausted, "full"), controller.ProvisioningReschedule},
		{status.Error(codes.Canceled, "x"), controller.ProvisioningInBackground},
		{status.Error(codes.DeadlineExceeded, "x"), controller.ProvisioningInBackground},
		{status.Error(codes.Unavailable, "x"), controller.ProvisioningInBackground},
		{status.Error(codes.Aborted, "busy"), controller.ProvisioningInBackground},
		{status.Error(codes.InvalidArgument, "x"), controller.ProvisioningFinished},
		{status.Error(codes.AlreadyExists, "x"), controller.ProvisioningFinished},
		{status.Error(codes.OutOfRange, "x"), controller.ProvisioningFinished},
		{status.Error(codes.Internal, "x"), controller.ProvisioningFinished},
		{status.Error(codes.Unknown, "x"), controller.ProvisioningFinished},
		// Wrapped, as explainCreateError returns it.
		{fmt.Errorf("context: %w", status.Error(codes.ResourceExhausted, "full")), controller.ProvisioningReschedule},
		// No gRPC answer at all: may be running, treat as in progress.
		{errors.New("connection reset"), controller.ProvisioningInBackground},
		{context.DeadlineExceeded, controller.ProvisioningInBackground},
	} {
		if got := provisioningState(tc.err); got != tc.want {
			t.Errorf("provisioningState(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

// The event text says what to do, and the library still sees the code
// (InvalidArgument makes it delay retries, for instance).
func TestExplainCreateErrorKeepsCode(t *testing.T) {
	p := &Provisioner{nodeName: "n1"}
	for _, tc := range []struct {
		code       codes.Code
		says, hint string
	}{
		{codes.ResourceExhausted, "driver says no", "--capacity"},
		{codes.ResourceExhausted, driver.NotEnforcedMessage + ": driver says no", "data root is btrfs"},
		{codes.ResourceExhausted, driver.NoPoolMessage + " fast: driver says no", `has no pool fast, which the class asks for with pool: fast`},
		{codes.InvalidArgument, "driver says no", "fix the StorageClass"},
		{codes.Unavailable, "driver says no", "retrying"},
		{codes.Internal, "driver says no", "stickyvol logs"},
	} {
		err := p.explainCreateError(status.Error(tc.code, tc.says))
		if status.Code(err) != tc.code {
			t.Errorf("%s: code after wrapping is %s", tc.code, status.Code(err))
		}
		if msg := err.Error(); !strings.Contains(msg, tc.hint) || !strings.Contains(msg, tc.says) || !strings.Contains(msg, `"n1"`) {
			t.Errorf("%s: message %q lacks the hint %q, the driver's words or the node", tc.code, msg, tc.hint)
		}
	}
}
