// Command probe runs inside test pods of the local cluster's harness test and
// checks what a workload sees:
//
//	probe nodes      list the cluster's nodes with the in-cluster config (the
//	                 kubernetes Service, the pod's service account token)
//	probe get URL    print the body of an HTTP GET, retrying for up to 30s
//
// It is a static binary packed into an image by the test, as Debian's static
// busybox has no working wget.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "nodes":
		err = nodes(ctx)
	case len(os.Args) == 3 && os.Args[1] == "get":
		err = get(ctx, os.Args[2])
	default:
		err = fmt.Errorf("usage: probe nodes | probe get URL")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func nodes(ctx context.Context) error {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	fmt.Println("host:", cfg.Host)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range list.Items {
		fmt.Println("node:", n.Name)
	}
	return nil
}

// get retries until the URL answers or the context ends: a Service's
// iptables rules appear up to a second after its endpoints.
func get(ctx context.Context, url string) error {
	for {
		body, err := getOnce(ctx, url)
		if err == nil {
			_, err = os.Stdout.Write(body)
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func getOnce(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}
