"""What a page embeds: its data as JSON inside a <script> element, and text in its HTML. The one
rule for both pages the project writes (viz_page.py, playground.py)."""
import html

from ..files import json_text

# Inside <script>, the HTML parser ends the element at "</script", and after "<!--" a "<script"
# makes it skip the next "</script>" too: the data would swallow the page's code. JSON has < > &
# only inside strings, where \u escapes mean the same characters to JSON.parse.
ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def script_json(data):
    """data as JSON to place inside <script type="application/json">: valid JSON (a non-finite
    number is null, files.json_text), with no <, > or & left for the HTML parser to act on."""
    text = json_text(data, separators=(",", ":"), ensure_ascii=True)
    for ch, escape in ESCAPES.items():
        text = text.replace(ch, escape)
    return text


def html_text(text):
    """text, escaped for HTML (a page's <title>)."""
    return html.escape(text)
