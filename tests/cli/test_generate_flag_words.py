"""The generate command's own one-line messages reach the user as written: only a library
argument name at the start of a message becomes a flag (cli.common.flag_message), never a
plain word ("give ..." was printed as "--give ...")."""

from helpers.run_scripts import run_script


def test_prompt_and_prompts_file_together(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    status, out, err = run_script("generate", ["Hello", "--prompts-file", prompts,
                                               "--model", tmp_path / "unused"], capsys)
    assert (status, out) == (2, "")
    assert err == "generate.py: error: give either a prompt or --prompts-file, not both\n"
