package framework

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
)

// Exec runs argv in a pod's first container, as `kubectl exec -i pod -- argv`
// does, with stdin (may be nil), and returns what it printed on stdout. A
// command that fails returns an error holding its stderr.
func (f *Framework) Exec(ctx context.Context, namespace, pod string, stdin io.Reader, argv ...string) ([]byte, error) {
	req := f.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).
		SubResource("exec").VersionedParams(&v1.PodExecOptions{
		Command: argv,
		Stdin:   stdin != nil,
		Stdout:  true,
		Stderr:  true,
	}, scheme.ParameterCodec)
	// WebSockets, as kubectl uses by default since 1.31; the local cluster's
	// API server speaks them, so there is no SPDY fallback to maintain.
	exec, err := remotecommand.NewWebSocketExecutor(f.Config, http.MethodGet, req.URL().String())
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("exec in %s/%s: %s: %w (stderr: %q)", namespace, pod,
			strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}
