from storyboard.subtitles import ass_escape, display_width, pack, split_sentences, time_chunks, write_ass, write_srt


def test_split_english_at_sentence_ends_not_decimals() -> None:
    assert split_sentences("Wait. It costs 3.5 dollars! Really?") == ["Wait.", "It costs 3.5 dollars!", "Really?"]


def test_split_japanese() -> None:
    assert split_sentences("猫が裁判官になりたい。本当に？はい！") == ["猫が裁判官になりたい。", "本当に？", "はい！"]


def test_pack_english_never_breaks_words_and_fits() -> None:
    line = "Everyone says a cat who wants to be a judge is impossible. I say today is the day."
    chunks = pack(line)
    assert all(display_width(c) <= 28 for c in chunks)
    assert " ".join(chunks).split() == line.split()
    assert chunks[-1] == "I say today is the day."


def test_pack_joins_short_sentences() -> None:
    assert pack("Fine. I was wrong. Case closed.") == ["Fine. I was wrong.", "Case closed."]


def test_pack_japanese_counts_wide_characters() -> None:
    line = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ、何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
    chunks = pack(line)
    assert "".join(chunks) == line
    assert all(display_width(c) <= 28 for c in chunks)
    assert chunks[:2] == ["吾輩は猫である。", "名前はまだ無い。"]
    assert pack("ねこはとてもかわいいですね、でもときどきいたずらします。") == ["ねこはとてもかわいいですね、", "でもときどきいたずらします。"]


def test_long_single_word_stays_whole() -> None:
    word = "Supercalifragilisticexpialidocious-ness"
    assert pack(f"{word} again.") == [word, "again."]


def test_time_chunks_share_span_by_length() -> None:
    cues = time_chunks(["aaaa", "aaaaaaaaaaaa"], 1.0, 3.0)
    assert cues[0].start == 1.0 and abs(cues[0].end - 1.5) < 1e-9
    assert abs(cues[1].end - 3.0) < 1e-9


def test_ass_and_srt_text() -> None:
    assert ass_escape("{\\b1}50% off: \"quotes\"") == "\\{\\\u2060b1\\}50% off: \"quotes\""
    cues = time_chunks(["Hello there."], 0.0, 1.25)
    ass = write_ass(cues, "A very long hook title that must wrap onto two lines", 3.0, 512, 768, "DejaVu Sans")
    assert "Style: Title" in ass and ",8,20,20,20," in ass  # top-centre, 20 px from the top
    assert "\\N" in ass.split("Title,,")[1].splitlines()[0]
    assert write_srt(cues) == "1\n00:00:00,000 --> 00:00:01,250\nHello there.\n"
