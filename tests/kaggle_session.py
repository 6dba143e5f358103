"""One Kaggle session of a kernel version, as the Kaggle twin (kaggle_twin.py) runs it:

    python tests/kaggle_session.py CODE_FILE EXECUTED_NOTEBOOK

run with the working directory /kaggle/working and $KAGGLE_ROOT at the session's /kaggle tree.
A notebook is executed top to bottom by a real Jupyter kernel (nbclient, ipykernel), as Kaggle
runs a notebook version, and each output reaches this process's stdout the moment the kernel
sends it (what Kaggle's Logs tab shows); the executed notebook, with its figures and tables, is
written to EXECUTED_NOTEBOOK. A script runs with no arguments, its output on the same pipe.
Exit code 0: every cell ran; 1: a cell failed (the version then ends in error).
"""
import subprocess
import sys


def run_notebook(path, executed):
    import nbclient
    import nbformat

    class StreamingClient(nbclient.NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                stream = sys.stdout if content["name"] == "stdout" else sys.stderr
                stream.write(content["text"])
                stream.flush()
            elif msg["msg_type"] == "error":
                print(f"{content['ename']}: {content['evalue']}", file=sys.stderr, flush=True)
            return super().output(outs, msg, display_id, cell_index)

    notebook = nbformat.read(path, as_version=4)
    client = StreamingClient(notebook, timeout=None, kernel_name="python3",
                             resources={"metadata": {"path": "."}})
    try:
        client.execute()
        code = 0
    except nbclient.exceptions.CellExecutionError:
        code = 1
    nbformat.write(notebook, executed)
    return code


def main(argv):
    code_file, executed = argv
    if code_file.endswith(".ipynb"):
        return run_notebook(code_file, executed)
    return subprocess.call([sys.executable, code_file])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
